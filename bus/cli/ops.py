"""`tradebus state`, `tradebus routes` and `tradebus deadletters`: look at and operate the bridge."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bus.cli.common import (
    EXIT_PROBLEM,
    EXIT_USAGE,
    CliContext,
    CliError,
    console,
    parse_symbol,
    parse_type,
    print_json,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON).")]

deadletters_app = typer.Typer(help="Tasks that failed past their retries: list, replay, purge.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("state")(state)
    app.command("routes")(routes)
    app.add_typer(deadletters_app, name="deadletters")


# --- state ----------------------------------------------------------------------------------------


def _table(title: str, rows: list[dict[str, Any]], first: list[str]) -> Table:
    cols = list(first) + sorted({k for r in rows for k in r} - set(first))
    table = Table(title=title, title_justify="left")
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in cols))
    return table


def state(
    ctx: typer.Context,
    symbol: Annotated[str | None, typer.Argument(help="Symbol (default: every known symbol).")] = None,
    order: Annotated[str | None, typer.Option("--order", help="Show this order.")] = None,
    position: Annotated[str | None, typer.Option("--position", help="Show this position.")] = None,
    positions_only: Annotated[bool, typer.Option("--positions", help="Only active positions.")] = False,
    orders_only: Annotated[bool, typer.Option("--orders", help="Only open orders.")] = False,
    lag: Annotated[bool, typer.Option("--lag", help="How far each log route has got, per symbol.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Active positions and open orders (the state projection), or one order / position."""
    obj: CliContext = ctx.obj
    if lag:
        return _lag(obj, parse_symbol(symbol) if symbol is not None else None, as_json)
    if (order or position) and symbol is None:
        raise CliError("--order / --position need a SYMBOL", EXIT_USAGE)
    if order and position:
        raise CliError("give --order or --position, not both", EXIT_USAGE)
    sym = parse_symbol(symbol) if symbol is not None else None
    bus = obj.bus()
    try:
        if order or position:
            kind, ident = ("order", order) if order else ("position", position)
            found = bus.get_order(sym, ident) if order else bus.get_position(sym, ident)
            if found is None:
                raise CliError(f"no {kind} {ident!r} for {sym}", EXIT_PROBLEM)
            if as_json:
                print_json(found)
            else:
                console.print(_table(f"{kind} {ident} ({sym})", [found], [f"{kind}_id", "status"]))
            return
        symbols = [sym] if sym else sorted(bus.known_symbols())
        out: dict[str, Any] = {}
        for s in symbols:
            entry: dict[str, Any] = {}
            if not orders_only:
                entry["positions"] = bus.get_active_positions(s)
            if not positions_only:
                entry["orders"] = bus.get_open_orders(s)
            out[s] = entry
    finally:
        bus.close()
    if as_json:
        print_json(out)
        return
    if not out:
        console.print("no symbols yet (nothing was published under this key prefix)")
    for s, entry in out.items():
        if "positions" in entry:
            console.print(
                _table(
                    f"{s}: active positions ({len(entry['positions'])})",
                    entry["positions"],
                    ["position_id", "status", "direction", "volume"],
                )
            )
        if "orders" in entry:
            console.print(
                _table(
                    f"{s}: open orders ({len(entry['orders'])})",
                    entry["orders"],
                    ["order_id", "status", "order_type", "volume"],
                )
            )


def _lag(obj: CliContext, symbol: str | None, as_json: bool) -> None:
    from bus.core.keys import Keys
    from bus.dispatch.logroutes.monitor import route_lag
    from bus.dispatch.routing import RoutingTable

    s = obj.settings
    table = RoutingTable.from_file(s.routes_file) if s.routes_file else RoutingTable.default()
    client = obj.client()
    try:
        rows = route_lag(client, Keys(s.key_prefix), table, [symbol] if symbol else None)
    finally:
        client.close()
    if as_json:
        print_json({"groups": [g.to_dict() for g in rows]})
        return
    t = Table(title="log routes: each symbol's consumer group (XINFO GROUPS)", title_justify="left")
    for c in ("symbol", "route", "lag", "pending", "drainer", "oldest waiting", "last delivered"):
        t.add_column(c)
    for g in rows:
        t.add_row(g.symbol, g.route, "?" if g.lag is None else str(g.lag), str(g.pending), "yes" if g.drainer else "-",
                  f"{g.waiting_ms / 1000:.1f}s" if g.waiting_ms else "-", g.last_delivered)  # fmt: skip
    console.print(t if rows else "no log route has a group yet (nothing routed to one was published)")


# --- routes ---------------------------------------------------------------------------------------


def _sample_event(event_type: Any, symbol: str) -> Any:
    from bus.events.model import TradeEvent

    data: dict[str, Any] = {}
    if event_type.is_order:
        data["order_id"] = "routes-probe"
    if event_type.is_position:
        data["position_id"] = "routes-probe"
    return TradeEvent(event_type=event_type, symbol=symbol, data=data)


def _route_dict(r: Any) -> dict[str, Any]:
    retry = getattr(r, "retry", None)
    return {
        "name": r.name,
        "task": r.task,
        "queue": r.queue,
        "event_types": list(r.event_types),
        "symbols": list(r.symbols),
        "priority": getattr(r, "priority", 0),
        "max_retries": getattr(retry, "max_retries", None),
        "mode": r.mode,
    }


def routes(
    ctx: typer.Context,
    event_type: Annotated[str | None, typer.Argument(help="Event type (default: show every route).")] = None,
    symbol: Annotated[str, typer.Option("--symbol", "-s", help="Symbol to route for.")] = "XAUUSD",
    routes_file: Annotated[Path | None, typer.Option("--routes-file", help="Routing table file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Which Celery tasks an event type triggers (or the whole routing table)."""
    from bus.dispatch.routing import RoutingTable

    if routes_file is not None and not routes_file.is_file():
        raise CliError(f"--routes-file {str(routes_file)!r} does not exist", EXIT_USAGE)
    table = RoutingTable.from_file(routes_file) if routes_file else RoutingTable.default()
    picked: Sequence[Any]
    if event_type is None:
        picked = list(_all_routes(table))
        title = "routing table"
    else:
        etype = parse_type(event_type)
        picked = table.routes_for(_sample_event(etype, parse_symbol(symbol)))
        title = f"{etype.value} on {symbol} triggers {len(picked)} task(s)"
    rows = [_route_dict(r) for r in picked]
    if as_json:
        print_json(
            {
                "event_type": None if event_type is None else parse_type(event_type).value,
                "symbol": symbol,
                "routes": rows,
            }
        )
        return
    t = Table(title=title, title_justify="left")
    for c in ("name", "mode", "task", "queue", "event_types", "max_retries"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["name"], r["mode"], r["task"], r["queue"], ",".join(r["event_types"]), str(r["max_retries"]))
    console.print(t)


def _all_routes(table: Any) -> list[Any]:
    for attr in ("routes", "_routes", "all"):
        value = getattr(table, attr, None)
        if value is not None:
            return list(value() if callable(value) else value)
    return list(table)


# --- deadletters ----------------------------------------------------------------------------------


@deadletters_app.command("list")
def dl_list(
    ctx: typer.Context,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="At most this many.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List dead letters, oldest first."""
    from bus.dispatch import deadletters

    obj: CliContext = ctx.obj
    client = obj.client(decode=False)
    from bus.core.keys import Keys

    try:
        items = [_dl_dict(x) for x in deadletters.list_dead_letters(client, Keys(obj.settings.key_prefix), count=count)]
    finally:
        client.close()
    if as_json:
        print_json({"dead_letters": items})
        return
    t = Table(title=f"dead letters ({len(items)})", title_justify="left")
    for c in ("id", "route", "task", "attempts", "reason"):
        t.add_column(c)
    for d in items:
        t.add_row(*(str(d.get(c, "")) for c in ("id", "route", "task", "attempts", "reason")))
    console.print(t)


def _dl_dict(x: Any) -> dict[str, Any]:
    if isinstance(x, dict):
        d = dict(x)
    elif hasattr(x, "_asdict"):
        d = x._asdict()
    elif hasattr(x, "__dataclass_fields__"):
        from dataclasses import asdict

        d = asdict(x)
    else:
        d = {"value": x}
    return {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v for k, v in d.items()}


@deadletters_app.command("replay")
def dl_replay(
    ctx: typer.Context,
    ids: Annotated[list[str] | None, typer.Argument(help="Dead-letter ids (default: all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Send dead-lettered tasks to their queues again (and remove them from the list)."""
    from bus.core.keys import Keys
    from bus.dispatch import deadletters
    from bus.dispatch.dispatcher import Dispatcher

    obj: CliContext = ctx.obj
    client = obj.client(decode=False)
    keys = Keys(obj.settings.key_prefix)
    dispatcher = Dispatcher.from_settings(obj.settings).attach(client, keys)
    try:
        replayed = list(deadletters.replay(client, keys, dispatcher, ids=ids or None))
    finally:
        dispatcher.close()
        client.close()
    n = len(replayed)
    if as_json:
        print_json({"replayed": n, "ids": replayed})
        return
    console.print(f"replayed {n} dead letter(s)")


@deadletters_app.command("purge")
def dl_purge(
    ctx: typer.Context,
    ids: Annotated[list[str] | None, typer.Argument(help="Dead-letter ids (default: all).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Purge all without asking.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete dead letters (all of them needs --yes)."""
    from bus.core.keys import Keys
    from bus.dispatch import deadletters

    obj: CliContext = ctx.obj
    if not ids and not yes:
        raise CliError("purging every dead letter needs --yes (or give the ids to purge)", EXIT_USAGE)
    client = obj.client(decode=False)
    try:
        n = deadletters.purge(client, Keys(obj.settings.key_prefix), ids=ids or None)
    finally:
        client.close()
    if as_json:
        print_json({"purged": n})
        return
    console.print(f"purged {n} dead letter(s)")
