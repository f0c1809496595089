"""`tradebus demo`: the whole bridge in one command, on a machine with nothing installed.

Redis: the configured one if it answers (under a key prefix of its own, deleted afterwards), else an
embedded redis-server. A real Celery worker subprocess (``celery -A celery_app worker``) with a private
broker. A paper-traded session on three symbols: random-walk prices, a moving-average strategy trading
through the executor, one oversized order that the risk task flags, and the kill switch refusing the
next order. Ends with a summary whose ``ok`` says whether everything the demo shows happened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from bus.config import Settings
from bus.demo.environment import DEMO_MAX_ORDER_VOLUME, DemoEnvironment
from bus.demo.report import collect
from bus.demo.session import DEMO_SYMBOLS, LOT, OVERSIZED_LOT, Session, Strategy, TaskMonitor, TimedBus
from celery_app import routing_from_settings

#: seconds between price ticks
TICK_SECONDS = 0.1
#: seconds to wait for the breach to come back from the risk task, and for the tasks to finish
BREACH_TIMEOUT = 15.0
DRAIN_TIMEOUT = 20.0
EXECUTOR_LOGGER = f"{__name__}.executor"

Say = Callable[[str], None]


def run_demo(
    base: Settings,
    *,
    seconds: float = 10.0,
    n_symbols: int = 3,
    embedded: bool = False,
    pool: str = "prefork",
    seed: int | None = None,
    say: Say = lambda msg: None,
    live_console: Console | None = None,
    linger: float = 0.0,
    on_summary: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run one demo session and return its summary. ``say`` hears progress; ``live_console``, when
    given, shows a live table of the session. With ``linger``, the summary goes to ``on_summary`` and the
    worker and Redis stay up that many seconds more (scrape the worker's /metrics, run `tradebus top`)."""
    logging.getLogger(EXECUTOR_LOGGER).setLevel(logging.ERROR)
    started = time.monotonic()
    with DemoEnvironment(base, embedded=embedded, pool=pool, log=say) as env:
        say(f"worker ready after {time.monotonic() - started:.1f}s; trading for {seconds:.0f}s; watch it with "
            f"TRADEBUS_KEY_PREFIX={env.prefix} tradebus top")  # fmt: skip
        session = _open_session(env, n_symbols=n_symbols, seed=seed)
        try:
            _trade(session, seconds=seconds, say=say, live_console=live_console)
            session.executor.flush()
            say("session over; waiting for the worker to finish the dispatched tasks")
            drained = _drain(session.timed, session.monitor, session.bus, routing_from_settings(env.settings))
            summary = collect(session, env, runtime=time.monotonic() - started, drained=drained)
            if linger > 0:
                if on_summary is not None:
                    on_summary(summary)
                say(f"lingering {linger:.0f}s: TRADEBUS_KEY_PREFIX={env.prefix} tradebus top; the worker's "
                    f"/metrics on TRADEBUS_METRICS_PORT={env.settings.metrics_port or '(not set)'}")  # fmt: skip
                time.sleep(linger)
            return summary
        finally:
            session.close()


def _open_session(env: DemoEnvironment, *, n_symbols: int, seed: int | None) -> Session:
    from bus.dispatch.dispatcher import Dispatcher
    from bus.dispatch.factory import EventBusFactory
    from bus.dispatch.routing import LOG
    from bus.executor.builder import ExecutorBuilder
    from bus.executor.paper import PaperVenue, RandomWalkFeed

    names = list(DEMO_SYMBOLS)[:n_symbols]
    # channels are not prefixed: on a shared server keep clear of real symbols' channels
    symbols = [f"DEMO-{s}" for s in names] if env.shared else names
    dispatcher = Dispatcher.from_settings(env.settings)
    bus = EventBusFactory.create_from_env(env.settings, dispatcher=dispatcher)
    timed = TimedBus(bus, frozenset(r.name for r in dispatcher.routing if r.mode == LOG))
    assert env.app is not None  # started by DemoEnvironment.__enter__
    monitor = TaskMonitor(env.app, timed).start()
    venue = PaperVenue(
        balance=100_000,
        leverage=100,
        symbols=symbols,
        max_fill_volume="0.5",
        contract_sizes={s: DEMO_SYMBOLS[n][1] for s, n in zip(symbols, names, strict=True)},
    )
    feed = RandomWalkFeed(
        venue,
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
        client=venue,
        event_bus=timed,
        logger=logging.getLogger(EXECUTOR_LOGGER),
    )
    strategy = Strategy(executor, venue, symbols)
    return Session(
        symbols=symbols,
        bus=bus,
        timed=timed,
        monitor=monitor,
        venue=venue,
        feed=feed,
        executor=executor,
        strategy=strategy,
    )


class _Breach:
    """The scripted part of the session on one symbol: an oversized order at ``at_tick``; the risk task
    flags it and the kill switch engages; the strategy's next order there is refused."""

    def __init__(self, session: Session, target: str, at_tick: int, say: Say) -> None:
        self.session, self.target, self.at_tick, self.say = session, target, at_tick, say
        self.phase = "trading"  # -> "breach sent" -> "refused"
        self.deadline = 0.0

    def step(self, tick: int) -> bool:
        """Advance the script at this tick; False when the breach never came back (give up)."""
        strategy, executor = self.session.strategy, self.session.executor
        if tick == self.at_tick:
            self.say(
                f"placing an oversized order: {OVERSIZED_LOT} lots of {self.target} (risk limit "
                f"max_order_volume is {DEMO_MAX_ORDER_VOLUME})"
            )
            strategy.open(tick, self.target, "BUY", OVERSIZED_LOT)
            self.phase, self.deadline = "breach sent", time.monotonic() + BREACH_TIMEOUT
        elif self.phase == "breach sent" and (reason := executor.kill_switch_reason(self.target)):
            self.say(f"risk task flagged it; kill switch engaged on {self.target}: {reason}")
            ticket = strategy.open(tick, self.target, "BUY", LOT)
            self.say(f"the strategy's next order on {self.target}: {ticket.status} ({ticket.reason})")
            self.phase = "refused"
        elif self.phase == "breach sent" and time.monotonic() > self.deadline:
            self.say(f"no risk breach came back within {BREACH_TIMEOUT:.0f}s (is the risk task running?)")
            return False
        return True


def _trade(session: Session, *, seconds: float, say: Say, live_console: Console | None) -> None:
    """Tick the prices and the strategy for ``seconds`` (at least 30 ticks), and until the breach script is done."""
    ticks = max(30, int(seconds / TICK_SECONDS))
    breach = _Breach(session, session.symbols[0], ticks // 3, say)
    view = None
    if live_console is not None:
        view = Live(_view(session, 0, ticks, breach.phase), console=live_console, refresh_per_second=6)
    with view or nullcontext():
        next_at = time.monotonic()
        tick = 0
        while tick < ticks or breach.phase != "refused":
            prices = session.feed.step()
            session.strategy.sync_positions()
            session.strategy.on_tick(tick, prices)
            if not breach.step(tick):
                break
            tick += 1
            if view is not None:
                view.update(_view(session, tick, ticks, breach.phase))
            elif tick % max(1, ticks // 4) == 0:
                say(
                    f"tick {tick}/{ticks}: {len(session.timed.publish_seconds)} events published, "
                    f"{len(session.monitor.finished)} tasks done"
                )
            next_at += TICK_SECONDS
            time.sleep(max(0.0, next_at - time.monotonic()))  # pacing the price feed, not waiting on work


def _drain(timed: TimedBus, monitor: TaskMonitor, bus: Any, routing: Any) -> bool:
    """Poll until every dispatched task has finished (succeeded, failed or rejected) and every log route
    has acknowledged everything in its groups, with a deadline."""
    from bus.dispatch.logroutes.monitor import caught_up, route_lag

    def done() -> bool:
        if not timed.expected_tasks <= monitor.finished:
            return False
        return caught_up(route_lag(bus.client, bus.keys, routing))

    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.05)
    return done()


def _view(session: Session, tick: int, ticks: int, phase: str) -> Table:
    timed, monitor, venue = session.timed, session.monitor, session.venue
    t = Table(
        title=f"tradebus demo: tick {tick}/{ticks} | events published {len(timed.publish_seconds)} | "
        f"tasks done {len(monitor.finished)}/{len(timed.expected_tasks)} | {phase}",
        title_justify="left",
    )
    for c in ("symbol", "price", "position", "orders", "refused"):
        t.add_column(c)
    positions = venue.positions()
    for s, book in session.strategy.books.items():
        mine = [f"{p['direction']} {Decimal(p['volume'])}" for p in positions if p["symbol"] == s]
        t.add_row(s, str(venue.prices.get(s)), ", ".join(mine) or "-", str(book.orders), str(book.refused))
    return t
