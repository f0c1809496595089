"""`tradebus publish` and `tradebus tail`: events in, events out."""

from __future__ import annotations

import json
import queue
import time
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape

from bus.cli.common import (
    EXIT_PROBLEM,
    EXIT_USAGE,
    CliContext,
    CliError,
    console,
    err_console,
    parse_symbol,
    parse_type,
    print_json,
)
from bus.errors import EventValidationError

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON).")]


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
    app.command("tail")(tail)


# --- publish --------------------------------------------------------------------------------------


def parse_pairs(pairs: list[str], data_json: str | None) -> dict[str, Any]:
    """``--data '{"a": 1}'`` and ``key=value`` pairs (values parsed as JSON when they are JSON)."""
    data: dict[str, Any] = {}
    if data_json:
        try:
            loaded = orjson.loads(data_json)
        except orjson.JSONDecodeError as e:
            raise CliError(f"--data is not valid JSON: {e}", EXIT_USAGE) from None
        if not isinstance(loaded, dict):
            raise CliError("--data must be a JSON object", EXIT_USAGE)
        data.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CliError(f"expected key=value, got {pair!r}", EXIT_USAGE)
        try:
            value: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = raw
        data[key] = value
    return data


def publish(
    ctx: typer.Context,
    event_type: Annotated[str, typer.Argument(help="Event type, e.g. order.created or ORDER_CREATED.")],
    symbol: Annotated[str, typer.Argument(help="Symbol, e.g. XAUUSD.")],
    pairs: Annotated[list[str] | None, typer.Argument(help="key=value fields of data.")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="data as a JSON object.")] = None,
    correlation_id: Annotated[str | None, typer.Option("--correlation-id")] = None,
    source: Annotated[str, typer.Option("--source")] = "tradebus-cli",
    apply_state: Annotated[
        bool,
        typer.Option(
            "--apply-state",
            help="Also update the state projection now (without waiting for a worker).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Publish one event: log it, broadcast it, dispatch its tasks.

    Example: tradebus publish order.created XAUUSD order_id=1 order_type=BUY price=2000.5 volume=0.1
    """
    from bus.events.model import TradeEvent

    obj: CliContext = ctx.obj
    etype = parse_type(event_type)
    sym = parse_symbol(symbol)
    payload = parse_pairs(pairs or [], data)
    try:
        event = TradeEvent(event_type=etype, symbol=sym, data=payload, correlation_id=correlation_id, source=source)
    except EventValidationError as e:
        raise CliError(f"invalid event: {e}", EXIT_USAGE) from None
    bus = obj.bus(dispatch=True, apply_state=apply_state)
    try:
        receipt = bus.publish(event)
    finally:
        bus.close()
    out = {
        "event_id": event.event_id,
        "event_type": event.event_type.value,
        "symbol": event.symbol,
        "log_id": receipt.log_id,
        "subscribers": receipt.subscribers,
        "dispatched": list(getattr(receipt, "dispatched", ())),
        "not_dispatched": list(getattr(receipt, "not_dispatched", ())),
    }
    if as_json:
        print_json(out)
        return
    console.print(
        f"published [bold]{out['event_type']}[/] {sym} event_id={event.event_id} "
        f"log_id={receipt.log_id} subscribers={receipt.subscribers}"
    )
    if out["dispatched"] or out["not_dispatched"]:
        console.print(
            f"  tasks: {', '.join(out['dispatched']) or '-'}"
            + (f"  (not dispatched yet: {', '.join(out['not_dispatched'])})" if out["not_dispatched"] else "")
        )


# --- tail -----------------------------------------------------------------------------------------


def _show(event: Any, as_json: bool, log_id: str | None = None) -> None:
    if as_json:
        d = event.to_dict()
        if log_id is not None:
            d["log_id"] = log_id
        print_json(d)
        return
    data = escape(json.dumps(event.data, separators=(",", ":"), default=str))
    console.print(
        f"[dim]{event.timestamp}[/] [cyan]{escape(event.symbol):<10}[/] [bold]{event.event_type.value:<26}[/] {data}",
        soft_wrap=True,
    )


def _subscribe(bus: Any, symbols: list[str], types: list[str], handler: Any) -> None:
    if symbols and types:
        for sym in symbols:
            for t in types:
                bus.subscribe(sym, t, handler)
    elif symbols:
        for sym in symbols:
            bus.subscribe_all(sym, handler)
    elif types:
        for t in types:
            bus.subscribe_type(t, handler)
    else:
        bus.subscribe_everything(handler)


def tail(
    ctx: typer.Context,
    symbol: Annotated[list[str] | None, typer.Option("--symbol", "-s", help="Only this symbol (repeatable).")] = None,
    event_type: Annotated[list[str] | None, typer.Option("--type", "-t", help="Only this type (repeatable).")] = None,
    from_log: Annotated[bool, typer.Option("--from-log", help="Replay the logged history first.")] = False,
    count: Annotated[int | None, typer.Option("--count", "-n", min=1, help="Exit after N events.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0, help="Exit after this many seconds.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Follow events live, filtered by symbol and type; --from-log shows the logged history first.

    Prints `listening` on stderr once subscribed. With --count, exits 1 if --timeout ends it first.
    Live delivery survives a Redis restart: missed events are fetched from the log.
    """
    obj: CliContext = ctx.obj
    symbols = [parse_symbol(s) for s in symbol or []]
    types = [parse_type(t).value for t in event_type or []]
    live: queue.Queue[Any] = queue.Queue()
    bus = obj.bus()
    _subscribe(bus, symbols, types, live.put)
    handle = bus.listen_in_thread()
    shown = 0
    seen: set[str] = set()
    try:
        if not handle.wait_ready(10):
            raise CliError("could not subscribe within 10s", EXIT_PROBLEM)
        if from_log:
            for log_id, event in _history(bus, symbols, types):
                _show(event, as_json, log_id)
                seen.add(event.event_id)
                shown += 1
                if count is not None and shown >= count:
                    return
        err_console.print(
            f"listening (prefix {bus.keys.prefix}; symbols {', '.join(symbols) or 'all'}; "
            f"types {', '.join(types) or 'all'})",
            markup=False,
        )
        end = None if timeout is None else time.monotonic() + timeout
        while count is None or shown < count:
            wait = 1.0 if end is None else min(1.0, end - time.monotonic())
            if wait <= 0:
                if count is not None:
                    raise CliError(f"timed out after {timeout}s with {shown} of {count} events", EXIT_PROBLEM)
                return
            try:
                event = live.get(timeout=wait)
            except queue.Empty:
                if not handle.is_alive():
                    raise CliError("the listener stopped (lost Redis?)", EXIT_PROBLEM) from None
                continue
            if event.event_id in seen:
                continue
            seen.add(event.event_id)
            _show(event, as_json)
            shown += 1
    finally:
        handle.stop()
        handle.join(5)
        bus.close()


def _history(bus: Any, symbols: list[str], types: list[str]) -> list[tuple[str, Any]]:
    rows = []
    for s in symbols or bus.known_symbols():
        for log_id, event in bus.read_log(s):
            if not types or event.event_type.value in types:
                rows.append((event.timestamp, log_id, event))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [(log_id, event) for _, log_id, event in rows]
