"""`tradebus routes`: which Celery tasks an event type triggers, or the whole routing table: the table the
workers read (TRADEBUS_ROUTES_FILE, else the defaults), a route without a queue shown where the Celery
app's router puts it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from bus.cli.common import (
    EXIT_USAGE,
    CliContext,
    CliError,
    JsonOption,
    console,
    parse_symbol,
    parse_type,
    print_json,
)

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
    """Which Celery tasks an event type triggers (or the whole routing table) — as the workers route them."""
    from bus.dispatch.routing import RoutingTable

    if routes_file is not None and not routes_file.is_file():
        raise CliError(f"--routes-file {str(routes_file)!r} does not exist", EXIT_USAGE)
    obj: CliContext = ctx.obj
    path = routes_file or obj.settings.routes_file
    table = RoutingTable.from_file(path) if path else RoutingTable.default()
    queue_of = _router(obj, table)
    if event_type is None:
        etype_value = None
        picked = table.routes
        title = "routing table"
    else:
        etype_value = parse_type(event_type).value
        picked = table.routes_for((etype_value, parse_symbol(symbol)))
        title = f"{etype_value} on {symbol} triggers {len(picked)} task(s)"
    rows = [_route_dict(r, queue_of(r)) for r in picked]
    if as_json:
        print_json({"event_type": etype_value, "symbol": symbol, "routes": rows})
        return
    t = Table(title=title, title_justify="left")
    for c in ("name", "task", "queue", "event_types", "priority", "max_retries", "options"):
        t.add_column(c)
    for r in rows:
        options = ", ".join(f"{k}={r[k]}" for k in ("ignore_result", "expires", "countdown") if r[k] is not None)
        t.add_row(r["name"], r["task"], r["queue"], ",".join(r["event_types"]), str(r["priority"]),
                  str(r["max_retries"]), options)  # fmt: skip
    console.print(t)


def _router(obj: CliContext, table: Any) -> Callable[[Route], str]:
    """A route's queue; for routes naming none, the queue the Celery app's router gives their task."""
    if all(r.queue for r in table):
        return lambda r: r.queue
    from bus.dispatch.messages import routed_queue
    from celery_app import make_celery

    app = make_celery(obj.settings, table, set_as_current=False)
    return lambda r: r.queue or routed_queue(app, r.task)


def _route_dict(r: Route, queue: str) -> dict[str, Any]:
    return {
        "name": r.name,
        "task": r.task,
        "queue": queue,
        "event_types": list(r.event_types),
        "symbols": list(r.symbols),
        "priority": r.priority,
        "max_retries": r.retry.max_retries,
        "ignore_result": r.ignore_result,
        "expires": r.expires,
        "countdown": r.countdown,
    }
