"""`tradebus routes`: which Celery tasks an event type triggers, or the whole routing table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from bus.cli.common import EXIT_USAGE, CliError, JsonOption, console, parse_symbol, parse_type, print_json

if TYPE_CHECKING:
    from bus.dispatch.routing import Route


def register(app: typer.Typer) -> None:
    app.command("routes")(routes)


def routes(
    ctx: typer.Context,
    event_type: Annotated[str | None, typer.Argument(help="Event type (default: show every route).")] = None,
    symbol: Annotated[str, typer.Option("--symbol", "-s", help="Symbol to route for.")] = "XAUUSD",
    routes_file: Annotated[Path | None, typer.Option("--routes-file", help="Routing table file.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Which Celery tasks an event type triggers (or the whole routing table)."""
    from bus.dispatch.routing import RoutingTable

    if routes_file is not None and not routes_file.is_file():
        raise CliError(f"--routes-file {str(routes_file)!r} does not exist", EXIT_USAGE)
    table = RoutingTable.from_file(routes_file) if routes_file else RoutingTable.default()
    if event_type is None:
        etype_value = None
        picked = table.routes
        title = "routing table"
    else:
        etype_value = parse_type(event_type).value
        picked = table.routes_for((etype_value, parse_symbol(symbol)))
        title = f"{etype_value} on {symbol} triggers {len(picked)} task(s)"
    rows = [_route_dict(r) for r in picked]
    if as_json:
        print_json({"event_type": etype_value, "symbol": symbol, "routes": rows})
        return
    t = Table(title=title, title_justify="left")
    for c in ("name", "task", "queue", "event_types", "max_retries"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["name"], r["task"], r["queue"], ",".join(r["event_types"]), str(r["max_retries"]))
    console.print(t)


def _route_dict(r: Route) -> dict[str, Any]:
    return {
        "name": r.name,
        "task": r.task,
        "queue": r.queue,
        "event_types": list(r.event_types),
        "symbols": list(r.symbols),
        "priority": r.priority,
        "max_retries": r.retry.max_retries,
    }
