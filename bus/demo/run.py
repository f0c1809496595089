"""`tradebus demo`: the whole bridge in one command, on a machine with nothing installed.

Redis: the configured one if it answers (under a key prefix of its own, deleted afterwards), else an
embedded redis-server. A real Celery worker subprocess (``celery -A celery_app worker``) with a private
broker. A paper-traded session on three symbols: random-walk prices, a moving-average strategy trading
through the executor, one oversized order that the risk task flags, and the kill switch refusing the
next order. Ends with a summary; exit 0 when everything the demo shows happened, 1 otherwise.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from bus.cli.common import (
    EXIT_PROBLEM,
    EXIT_USAGE,
    CliContext,
    CliError,
    console,
    err_console,
    print_json,
)
from bus.demo.environment import DemoEnvironment
from bus.demo.session import DEMO_SYMBOLS, LOT, OVERSIZED_LOT, Strategy, TaskMonitor, TimedBus

#: seconds between price ticks
TICK_SECONDS = 0.1
#: seconds to wait for the breach to come back from the risk task, and for the tasks to finish
BREACH_TIMEOUT = 15.0
DRAIN_TIMEOUT = 20.0


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    ctx: typer.Context,
    seconds: Annotated[float, typer.Option("--seconds", min=3, max=45, help="Length of the trading session.")] = 10.0,
    symbols: Annotated[int, typer.Option("--symbols", min=2, max=3, help="How many symbols to trade.")] = 3,
    embedded: Annotated[bool, typer.Option("--embedded", help="Always start an embedded Redis.")] = False,
    pool: Annotated[str, typer.Option("--pool", help="Worker pool: prefork, threads or solo.")] = "prefork",
    seed: Annotated[int | None, typer.Option("--seed", help="Random-walk seed (repeatable runs).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON only.")] = False,
) -> None:
    """Run the whole bridge: Redis, a Celery worker, a paper-traded session, and a summary."""
    obj: CliContext = ctx.obj
    if pool not in ("prefork", "threads", "solo"):
        raise CliError(f"--pool must be prefork, threads or solo, not {pool!r}", EXIT_USAGE)
    summary = run_demo(
        obj.settings,
        seconds=seconds,
        n_symbols=symbols,
        embedded=embedded,
        pool=pool,
        seed=seed,
        as_json=as_json,
    )
    if as_json:
        print_json(summary)
    else:
        from bus.demo.report import render

        render(summary, console)
    if not summary["ok"]:
        raise typer.Exit(EXIT_PROBLEM)


def run_demo(
    base: Any,
    *,
    seconds: float = 10.0,
    n_symbols: int = 3,
    embedded: bool = False,
    pool: str = "prefork",
    seed: int | None = None,
    as_json: bool = False,
) -> dict[str, Any]:
    out = err_console if as_json else console
    quiet = as_json

    def say(msg: str) -> None:
        if not quiet:
            out.print(f"[dim]demo:[/] {msg}", soft_wrap=True)

    logging.getLogger("tradebus.demo.executor").setLevel(logging.ERROR)
    started = time.monotonic()
    with DemoEnvironment(base, embedded=embedded, pool=pool, log=say) as env:
        say(f"worker ready after {time.monotonic() - started:.1f}s; trading for {seconds:.0f}s")
        return _session(
            env,
            seconds=seconds,
            n_symbols=n_symbols,
            seed=seed,
            live=not quiet,
            say=say,
            started=started,
        )


def _session(
    env: DemoEnvironment,
    *,
    seconds: float,
    n_symbols: int,
    seed: int | None,
    live: bool,
    say: Any,
    started: float,
) -> dict[str, Any]:
    from bus.demo.report import collect
    from bus.dispatch.dispatcher import Dispatcher
    from bus.dispatch.factory import EventBusFactory
    from bus.executor.builder import ExecutorBuilder
    from bus.executor.paper import PaperBroker, RandomWalkFeed

    names = list(DEMO_SYMBOLS)[:n_symbols]
    # channels are not prefixed: on a shared server keep clear of real symbols' channels
    symbols = [f"DEMO-{s}" for s in names] if env.shared else names
    bus = EventBusFactory.create_from_env(env.settings, dispatcher=Dispatcher.from_settings(env.settings))
    timed = TimedBus(bus)
    monitor = TaskMonitor(env.app, timed).start()
    broker = PaperBroker(
        balance=100_000,
        leverage=100,
        symbols=symbols,
        max_fill_volume="0.5",
        contract_sizes={s: DEMO_SYMBOLS[n][1] for s, n in zip(symbols, names, strict=True)},
    )
    feed = RandomWalkFeed(
        broker,
        {s: DEMO_SYMBOLS[n][0] for s, n in zip(symbols, names, strict=True)},
        seed=seed,
        volatility=0.0015,
        tick="0.00001",
    )
    executor = ExecutorBuilder.build_from_config(
        config={
            "source": "tradebus-demo",
            "symbols": symbols,
            "outbox_path": str(env.workdir / "outbox.sqlite3"),
        },
        client=broker,
        event_bus=timed,
        logger=logging.getLogger("tradebus.demo.executor"),
    )
    strategy = Strategy(executor, broker, symbols)
    target = symbols[0]
    ticks = max(30, int(seconds / TICK_SECONDS))
    breach_tick = ticks // 3
    phase = "trading"
    client = env.client()
    try:
        view = (
            Live(
                _view(broker, strategy, timed, monitor, 0, ticks, phase),
                console=console,
                refresh_per_second=6,
                transient=False,
            )
            if live and console.is_terminal
            else None
        )
        if view is not None:
            view.start()
        next_at = time.monotonic()
        tick = 0
        breach_deadline = None
        while tick < ticks or phase != "refused":
            prices = feed.step()
            strategy.sync_positions()
            strategy.on_tick(tick, prices)
            if tick == breach_tick:
                say(
                    f"placing an oversized order: {OVERSIZED_LOT} lots of {target} (risk limit "
                    f"max_order_volume is {env_limit()})"
                )
                strategy.open(tick, target, "BUY", OVERSIZED_LOT)
                phase, breach_deadline = "breach sent", time.monotonic() + BREACH_TIMEOUT
            elif phase == "breach sent" and executor.kill_switch_reason(target):
                say(f"risk task flagged it; kill switch engaged on {target}: {executor.kill_switch_reason(target)}")
                ticket = strategy.open(tick, target, "BUY", LOT)
                say(f"the strategy's next order on {target}: {ticket.status} ({ticket.reason})")
                phase = "refused"
            elif phase == "breach sent" and breach_deadline is not None and time.monotonic() > breach_deadline:
                say(f"no risk breach came back within {BREACH_TIMEOUT:.0f}s (is the risk task running?)")
                break
            tick += 1
            if view is not None:
                view.update(_view(broker, strategy, timed, monitor, tick, ticks, phase))
            elif tick % max(1, ticks // 4) == 0:
                say(
                    f"tick {tick}/{ticks}: {len(timed.publish_seconds)} events published, "
                    f"{len(monitor.finished)} tasks done"
                )
            next_at += TICK_SECONDS
            time.sleep(max(0.0, next_at - time.monotonic()))  # pacing the price feed, not waiting on work
        if view is not None:
            view.stop()
        executor.flush()
        say("session over; waiting for the worker to finish the dispatched tasks")
        drained = _drain(timed, monitor)
        summary = collect(
            bus=bus,
            client=client,
            keys=bus.keys,
            broker=broker,
            symbols=symbols,
            timed=timed,
            monitor=monitor,
            strategy=strategy,
            env=env,
            runtime=time.monotonic() - started,
            drained=drained,
        )
    finally:
        executor.close()
        monitor.stop()
        bus.close()
        client.close()
    return summary


def env_limit() -> int:
    from bus.demo.environment import DEMO_MAX_ORDER_VOLUME

    return DEMO_MAX_ORDER_VOLUME


def _drain(timed: TimedBus, monitor: TaskMonitor) -> bool:
    """Poll until every dispatched task has finished (succeeded, failed or rejected), with a deadline."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        if timed.expected_tasks <= monitor.finished:
            return True
        time.sleep(0.05)
    return timed.expected_tasks <= monitor.finished


def _view(
    broker: Any,
    strategy: Strategy,
    timed: TimedBus,
    monitor: TaskMonitor,
    tick: int,
    ticks: int,
    phase: str,
) -> Table:
    t = Table(
        title=f"tradebus demo: tick {tick}/{ticks} | events published {len(timed.publish_seconds)} | "
        f"tasks done {len(monitor.finished)}/{len(timed.expected_tasks)} | {phase}",
        title_justify="left",
    )
    for c in ("symbol", "price", "position", "orders", "refused"):
        t.add_column(c)
    positions = broker.positions()
    for s, book in strategy.books.items():
        mine = [f"{p['direction']} {Decimal(p['volume'])}" for p in positions if p["symbol"] == s]
        t.add_row(
            s,
            str(broker.prices.get(s)),
            ", ".join(mine) or "-",
            str(book.orders),
            str(book.refused),
        )
    return t
