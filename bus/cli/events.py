"""`tradebus publish` and `tradebus tail`: events in, events out."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape

from bus.cli.common import (
    EXIT_PROBLEM,
    EXIT_USAGE,
    CliContext,
    CliError,
    JsonOption,
    console,
    err_console,
    parse_symbol,
    parse_type,
    print_json,
)
from bus.errors import EventValidationError

if TYPE_CHECKING:
    from bus.core.bus import RedisEventBus
    from bus.core.subscriber import ListenerHandle
    from bus.core.subscription import LostEvents
    from bus.events.model import TradeEvent

#: seconds `tail` waits for its subscription before giving up
SUBSCRIBE_TIMEOUT = 10.0


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
    as_json: JsonOption = False,
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
    dispatched, not_dispatched = list(receipt.dispatched), list(receipt.not_dispatched)
    if as_json:
        print_json(
            {
                "event_id": event.event_id,
                "event_type": event.event_type.value,
                "symbol": event.symbol,
                "log_id": receipt.log_id,
                "subscribers": receipt.subscribers,
                "dispatched": dispatched,
                "not_dispatched": not_dispatched,
            }
        )
        return
    console.print(
        f"published [bold]{event.event_type.value}[/] {sym} event_id={event.event_id} "
        f"log_id={receipt.log_id} subscribers={receipt.subscribers}"
    )
    if dispatched or not_dispatched:
        console.print(
            f"  tasks: {', '.join(dispatched) or '-'}"
            + (f"  (not dispatched yet: {', '.join(not_dispatched)})" if not_dispatched else "")
        )


# --- tail -----------------------------------------------------------------------------------------


def tail(
    ctx: typer.Context,
    symbol: Annotated[list[str] | None, typer.Option("--symbol", "-s", help="Only this symbol (repeatable).")] = None,
    event_type: Annotated[list[str] | None, typer.Option("--type", "-t", help="Only this type (repeatable).")] = None,
    from_log: Annotated[bool, typer.Option("--from-log", help="Replay the logged history first.")] = False,
    count: Annotated[int | None, typer.Option("--count", "-n", min=1, help="Exit after N events.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0, help="Exit after this many seconds.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Follow events live, filtered by symbol and type; --from-log shows the logged history first.

    Prints `listening` on stderr once subscribed. With --count, exits 1 if --timeout ends it first.
    Live delivery survives a Redis restart: missed events are fetched from the log.
    """
    obj: CliContext = ctx.obj
    symbols = [parse_symbol(s) for s in symbol or []]
    types = [parse_type(t).value for t in event_type or []]
    live: queue.Queue[TradeEvent] = queue.Queue()
    bus = obj.bus()
    _subscribe(bus, symbols, types, live.put)
    bus.on_lost_events(_show_lost)
    handle = bus.listen_in_thread()
    try:
        if not handle.wait_ready(SUBSCRIBE_TIMEOUT):
            raise CliError(f"could not subscribe within {SUBSCRIBE_TIMEOUT:.0f}s", EXIT_PROBLEM)
        # subscribed before reading the log: an event published meanwhile is in both, shown once
        seen: set[str] = set()
        shown = 0
        if from_log:
            history = _history(bus, symbols, types)
            for log_id, event in history if count is None else history[:count]:
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
        _follow(live, handle, seen, shown=shown, count=count, timeout=timeout, as_json=as_json)
    finally:
        handle.stop()
        handle.join(5)
        bus.close()


def _subscribe(bus: RedisEventBus, symbols: list[str], types: list[str], handler: Callable[[TradeEvent], Any]) -> None:
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


def _history(bus: RedisEventBus, symbols: list[str], types: list[str]) -> list[tuple[str, TradeEvent]]:
    """The logged events of these symbols and types, in time order across symbols."""
    rows = []
    for s in symbols or bus.known_symbols():
        for log_id, event in bus.read_log(s):
            if not types or event.event_type.value in types:
                rows.append((event.timestamp, log_id, event))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [(log_id, event) for _, log_id, event in rows]


def _follow(
    live: queue.Queue[TradeEvent],
    handle: ListenerHandle,
    seen: set[str],
    *,
    shown: int,
    count: int | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Show live events not ``seen`` yet until ``count`` in all were ``shown`` or ``timeout`` ends it."""
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


def _show_lost(lost: LostEvents) -> None:
    """On stderr (stdout stays events only, --json included): events trimmed from the log before tail read them."""
    count = "an unknown number of events" if lost.count is None else f"{lost.count} event(s)"
    err_console.print(
        f"LOST {count} of {lost.symbol} (all types): trimmed from the log after log id {lost.after} and before "
        f"{lost.before or 'its end'}, before tail could read them (TRADEBUS_LOG_MAXLEN)",
        markup=False,
        style="bold red",
    )


def _show(event: TradeEvent, as_json: bool, log_id: str | None = None) -> None:
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
