"""`tradebus metrics` (Prometheus figures of the bus, once or served) and `tradebus top` (a live view)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.table import Table

from bus.cli.common import CliContext, console

#: seconds `tradebus top` waits for workers to answer a ping (the view must not stall on a dead broker)
PING_TIMEOUT = 1.0


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics)
    app.command("top")(top)


def metrics(
    ctx: typer.Context,
    serve: Annotated[
        int | None, typer.Option("--serve", min=1, max=65535, help="Serve /metrics on this port until stopped.")
    ] = None,
) -> None:
    """Print the bus's Redis-side gauges in Prometheus text format (pending dispatch, dead letters, kill switches)."""
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server

    from bus.core.keys import Keys
    from bus.monitor.gauges import RedisGauges

    obj: CliContext = ctx.obj
    client = obj.client()
    registry = CollectorRegistry()
    registry.register(RedisGauges(client, Keys(obj.settings.key_prefix), obj.routing()))
    if serve is None:
        console.out(generate_latest(registry).decode(), end="")
        client.close()
        return
    start_http_server(serve, registry=registry)
    console.print(f"serving the bus's gauges on http://0.0.0.0:{serve}/metrics (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)  # the server runs in its own thread; this one only waits for Ctrl-C
    finally:
        client.close()


def top(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one view (rates over one interval) and exit.")] = False,
) -> None:
    """A live view of the bus: events/s by type, tasks per route, queue depths, dead letters, kill switches."""
    from rich.live import Live

    from bus.core.keys import Keys
    from bus.monitor.activity import ActivityReader
    from bus.monitor.routes import RouteReader

    obj: CliContext = ctx.obj
    client = obj.client()
    keys = Keys(obj.settings.key_prefix)
    reader = ActivityReader(client, keys)
    routes = RouteReader(client, keys, obj.routing())
    reader.poll()
    routes.poll()
    try:
        if once:
            time.sleep(interval)  # the rates are measured over this interval
            console.print(_view(client, keys, reader, routes, _workers_alive(obj)))
            return
        with Live(console=console, screen=False, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(_view(client, keys, reader, routes, _workers_alive(obj)), refresh=True)
    finally:
        client.close()


def _workers_alive(obj: CliContext) -> list[str] | None:
    """Names of the workers that answered a ping; None when the broker could not be asked."""
    from celery_app import make_celery

    try:
        app = make_celery(obj.settings, set_as_current=False)
        replies = app.control.ping(timeout=PING_TIMEOUT) or []
    except Exception:  # noqa: BLE001 - the view goes on without the figure
        return None
    return sorted(name for reply in replies for name in reply)


def _view(client: Any, keys: Any, reader: Any, route_reader: Any, workers: list[str] | None) -> Group:
    from bus.monitor.snapshot import snapshot

    activity = reader.poll()
    snap = snapshot(client, keys)
    routes = Table(title="routes (done/s and mean publish-to-done latency over the interval; log routes' lag)",
                   title_justify="left")  # fmt: skip
    for column in ("route", "done/s", "latency ms", "done", "lag", "pending", "oldest waiting s"):
        routes.add_column(column, justify="left" if column == "route" else "right")
    for r in route_reader.poll():
        waiting = None if r.oldest_waiting_ms is None else f"{r.oldest_waiting_ms / 1000:.1f}"
        routes.add_row(r.route, f"{r.per_second:.1f}", "-" if r.latency_ms is None else f"{r.latency_ms:.1f}",
                       str(r.done), _or_dash(r.lag), _or_dash(r.pending), _or_dash(waiting))  # fmt: skip
    events = Table(title=f"events/s (last {activity.seconds:.1f}s)", title_justify="left")
    events.add_column("event type")
    events.add_column("events/s", justify="right")
    for event_type, rate in sorted(activity.per_second().items()):
        events.add_row(event_type, f"{rate:.1f}")
    tasks = Table(title="tasks (since the stats were reset)", title_justify="left")
    for column in ("task", "run", "retried", "dead-lettered"):
        tasks.add_column(column, justify="left" if column == "task" else "right")
    run, retried, dead = snap.tasks("run"), snap.tasks("retried"), snap.tasks("dead_lettered")
    for task in sorted(set(run) | set(retried) | set(dead)):
        tasks.add_row(task, str(run.get(task, 0)), str(retried.get(task, 0)), str(dead.get(task, 0)))
    bus = Table(title="bus", title_justify="left", show_header=False)
    bus.add_row("pending dispatch", str(snap.pending_dispatch))
    bus.add_row("dead letters", str(snap.dead_letters))
    bus.add_row("symbols", str(snap.symbols))
    switches = ", ".join(f"{s} ({why})" for s, why in sorted(snap.kill_switches.items())) or "none"
    bus.add_row("kill switches", switches)
    bus.add_row("workers alive", "broker unreachable" if workers is None else f"{len(workers)} {' '.join(workers)}")
    return Group(events, routes, tasks, bus)


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)
