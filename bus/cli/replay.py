"""`tradebus replay`: re-dispatch the routed tasks of a range of logged events."""

from __future__ import annotations

from typing import Annotated

import typer

from bus.cli.common import (
    EXIT_PROBLEM,
    EXIT_USAGE,
    CliContext,
    CliError,
    JsonOption,
    console,
    parse_symbol,
    print_json,
)


def register(app: typer.Typer) -> None:
    app.command("replay")(replay)


def _stream_id(value: str, what: str) -> str:
    if value in ("-", "+"):
        return value
    ms, sep, seq = value.partition("-")
    if not ms.isdigit() or (sep and not seq.isdigit()):
        raise CliError(f"{what} {value!r} is not a log id (like 1700000000000-0, or - / +)", EXIT_USAGE)
    return value


def _id_key(log_id: str) -> tuple[int, int]:
    ms, _, seq = log_id.partition("-")
    return int(ms), int(seq or 0)


def replay(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="Symbol whose log to read.")],
    start: Annotated[str, typer.Option("--from", help="First log id (inclusive), or '-'.")] = "-",
    end: Annotated[str, typer.Option("--to", help="Last log id (inclusive), or '+'.")] = "+",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be re-dispatched.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Re-dispatch the routed tasks of a range of logged events (by log id). Tasks are idempotent."""
    from bus.dispatch.dispatcher import Dispatcher

    obj: CliContext = ctx.obj
    sym = parse_symbol(symbol)
    lo, hi = _stream_id(start, "--from"), _stream_id(end, "--to")
    if lo not in ("-", "+") and hi not in ("-", "+") and _id_key(lo) > _id_key(hi):
        raise CliError(f"--from {lo} is after --to {hi}", EXIT_USAGE)
    bus = obj.bus()
    dispatcher = Dispatcher.from_settings(obj.settings)
    dispatcher.attach(bus.client, bus.keys)
    try:
        picked = [
            (log_id, ev)
            for log_id, ev in bus.read_log(sym)
            if (lo == "-" or _id_key(log_id) >= _id_key(lo)) and (hi == "+" or _id_key(log_id) <= _id_key(hi))
        ]
        results = [
            {
                "log_id": log_id,
                "event_id": ev.event_id,
                "event_type": ev.event_type.value,
                "routes": [r.name for r in dispatcher.routes_for(ev)],
            }
            for log_id, ev in picked
        ]
        if picked and not dry_run:
            sent = dispatcher.redispatch_range(sym, picked[0][0], picked[-1][0])
            if sent != len(picked):
                raise CliError(f"re-dispatched {sent} events, expected {len(picked)}", EXIT_PROBLEM)
    finally:
        dispatcher.close()
        bus.close()
    if as_json:
        print_json({"symbol": sym, "dry_run": dry_run, "count": len(results), "events": results})
        return
    verb = "would re-dispatch" if dry_run else "re-dispatched"
    for r in results:
        console.print(
            f"{r['log_id']}  {r['event_type']:<26} {r['event_id']}  {', '.join(r['routes']) or '-'}",
            markup=False,
        )
    console.print(f"{verb} {len(results)} event(s) of {sym}")
