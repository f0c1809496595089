"""`tradebus state`: active positions and open orders from the state projection, or one order / position."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from bus.cli.common import EXIT_PROBLEM, EXIT_USAGE, CliContext, CliError, JsonOption, console, parse_symbol, print_json

if TYPE_CHECKING:
    from bus.core.bus import RedisEventBus

# one symbol's projection: "positions" and/or "orders", each a list of field -> value rows
SymbolState = dict[str, list[dict[str, str]]]


def register(app: typer.Typer) -> None:
    app.command("state")(state)


def state(
    ctx: typer.Context,
    symbol: Annotated[str | None, typer.Argument(help="Symbol (default: every known symbol).")] = None,
    order: Annotated[str | None, typer.Option("--order", help="Show this order.")] = None,
    position: Annotated[str | None, typer.Option("--position", help="Show this position.")] = None,
    positions_only: Annotated[bool, typer.Option("--positions", help="Only active positions.")] = False,
    orders_only: Annotated[bool, typer.Option("--orders", help="Only open orders.")] = False,
    lag: Annotated[bool, typer.Option("--lag", help="How far each log route has got, per symbol.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Active positions and open orders (the state projection), or one order / position."""
    obj: CliContext = ctx.obj
    if lag:
        _show_lag(obj, parse_symbol(symbol) if symbol is not None else None, as_json)
        return
    if (order or position) and symbol is None:
        raise CliError("--order / --position need a SYMBOL", EXIT_USAGE)
    if order and position:
        raise CliError("give --order or --position, not both", EXIT_USAGE)
    sym = parse_symbol(symbol) if symbol is not None else None
    bus = obj.bus()
    try:
        if sym is not None and (order or position):
            _show_one(bus, sym, order, position, as_json)
            return
        out = _read_state(bus, sym, positions=not orders_only, orders=not positions_only)
    finally:
        bus.close()
    if as_json:
        print_json(out)
    else:
        _render(out)


def _show_one(bus: RedisEventBus, sym: str, order: str | None, position: str | None, as_json: bool) -> None:
    kind, ident = ("order", order) if order else ("position", position or "")
    found = bus.get_order(sym, ident) if order else bus.get_position(sym, ident)
    if found is None:
        raise CliError(f"no {kind} {ident!r} for {sym}", EXIT_PROBLEM)
    if as_json:
        print_json(found)
    else:
        console.print(_table(f"{kind} {ident} ({sym})", [found], [f"{kind}_id", "status"]))


def _show_lag(obj: CliContext, symbol: str | None, as_json: bool) -> None:
    """Each log route's consumer group per symbol (what ``XINFO GROUPS`` on the log shows)."""
    from bus.core.keys import Keys
    from bus.dispatch.logroutes.monitor import route_lag

    s = obj.settings
    table = obj.routing()
    client = obj.client()
    try:
        rows = route_lag(client, Keys(s.key_prefix), table, [symbol] if symbol else None)
    finally:
        client.close()
    if as_json:
        print_json({"groups": [g.to_dict() for g in rows]})
        return
    if not rows:
        console.print("no log route has a group yet (nothing it takes was published)")
        return
    t = Table(title="log routes: each symbol's consumer group", title_justify="left")
    # lag: unread entries the route takes; unread: Redis's lag (XINFO GROUPS), other types included
    for c in ("symbol", "route", "lag", "unread", "pending", "drainer", "oldest waiting", "last delivered"):
        t.add_column(c)
    for g in rows:
        t.add_row(g.symbol, g.route, _or_unknown(g.lag), _or_unknown(g.unread), str(g.pending),
                  "yes" if g.drainer else "-", f"{g.waiting_ms / 1000:.1f}s" if g.waiting_ms else "-",
                  g.last_delivered)  # fmt: skip
    console.print(t)


def _or_unknown(n: int | None) -> str:
    return "?" if n is None else str(n)


def _read_state(bus: RedisEventBus, sym: str | None, *, positions: bool, orders: bool) -> dict[str, SymbolState]:
    out: dict[str, SymbolState] = {}
    for s in [sym] if sym else sorted(bus.known_symbols()):
        entry: SymbolState = {}
        if positions:
            entry["positions"] = bus.get_active_positions(s)
        if orders:
            entry["orders"] = bus.get_open_orders(s)
        out[s] = entry
    return out


def _render(out: dict[str, SymbolState]) -> None:
    if not out:
        console.print("no symbols yet (nothing was published under this key prefix)")
    for s, entry in out.items():
        if "positions" in entry:
            rows = entry["positions"]
            console.print(
                _table(f"{s}: active positions ({len(rows)})", rows, ["position_id", "status", "direction", "volume"])
            )
        if "orders" in entry:
            rows = entry["orders"]
            console.print(
                _table(f"{s}: open orders ({len(rows)})", rows, ["order_id", "status", "order_type", "volume"])
            )


def _table(title: str, rows: list[dict[str, str]], first: list[str]) -> Table:
    """The ``first`` columns in that order, then every other field of the rows, sorted."""
    cols = list(first) + sorted({k for r in rows for k in r} - set(first))
    table = Table(title=title, title_justify="left")
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in cols))
    return table
