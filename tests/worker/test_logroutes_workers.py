"""Log routes with real workers the tests start and kill: order across workers, a burst over many symbols,
a poison event, a drainer SIGKILLed mid-batch, a Redis crash with AOF mid-drain.

Routes come from a routes file (TRADEBUS_ROUTES_FILE, as an operator would configure them); the effects
are tests/logroute_effects.py's, which record each applied event id in the batch's transaction.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bus.config import LoadEnvironmentVariables, Settings
from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.core.state import get_order
from bus.dispatch.deadletters import list_dead_letters
from bus.dispatch.logroutes.config import LogRouteConfig
from bus.dispatch.routing import RoutingTable
from bus.events.model import TradeEvent
from celery_app import make_celery
from tests.helpers import dispatcher_for, wait_for
from tests.logroute_effects import applied, routes_file
from tests.subprocess_workers import stop_group

pytestmark = [pytest.mark.redis, pytest.mark.celery, pytest.mark.faults, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

CLAIM_AFTER = 3.0  # a dead drainer's entries are taken over within this (the lease TTL is half)
ENV = {"TRADEBUS_LOGROUTE_CLAIM_AFTER": str(CLAIM_AFTER), "TRADEBUS_LOGROUTE_BATCH": "10",
       "TRADEBUS_BEAT_WAKE_INTERVAL": "0.5"}  # fmt: skip
RECORD = {"name": "rec", "task": "tradebus_test.log_record", "queue": "tradebus.state", "event_types": ["order.*"],
          "mode": "log"}  # fmt: skip
SLOW = {**RECORD, "name": "slow", "task": "tradebus_test.log_slow"}
POISON = {"name": "poison", "task": "tradebus_test.log_poison", "queue": "tradebus.risk", "event_types": ["order.*"],
          "mode": "log", "retry": {"max_retries": 2, "backoff": 0.2, "backoff_max": 0.5}}  # fmt: skip


@contextlib.contextmanager
def log_worker(settings: Settings, name: str, routes: str, *, beat: bool = False, concurrency: int = 2,
               **env: str) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """``celery worker`` (prefork) for the log routes of ``routes``, with an embedded beat if asked."""
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{settings.key_prefix}-{name}.log"
    cmd = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-P", "prefork", "-c",
           str(concurrency), "-Q", "tradebus.state,tradebus.risk,tradebus.reconcile", "--include",
           "tests.logroute_effects", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
           "-n", f"{name}-{settings.key_prefix}@%h"]  # fmt: skip
    if beat:
        cmd += ["-B", "-s", str(log_path.with_suffix(".beat"))]
    environ = {**os.environ, "REDIS_URL": settings.bus_url, "CELERY_BROKER_URL": settings.broker_url,
               "TRADEBUS_KEY_PREFIX": settings.key_prefix, "TRADEBUS_BROKER_KEY_PREFIX": settings.broker_key_prefix,
               "TRADEBUS_ROUTES_FILE": routes, "PYTHONPATH": str(REPO), **ENV, **env}  # fmt: skip
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
    try:
        wait_for(lambda: b"ready." in log_path.read_bytes(), timeout=60, what=f"worker {name} ready")
        yield proc
    finally:
        stop_group(proc)


def tail(proc: subprocess.Popen[bytes]) -> str:
    return proc.log_path.read_text(errors="replace")[-3000:]  # type: ignore[attr-defined]


def publisher(settings: Settings, routes: str) -> RedisEventBus:
    table = RoutingTable.from_file(routes)
    app = make_celery(settings, table, set_as_current=False)
    config = LogRouteConfig(batch=10, claim_after=CLAIM_AFTER)
    return RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings, log_routes=config))


def order(i: int, symbol: str, **data: object) -> TradeEvent:
    return TradeEvent.create_order_created(symbol, f"{symbol}-{i}", "BUY", 100.0 + i, 1.0, **data)


def test_order_kept_across_workers_for_a_burst_over_many_symbols_with_a_poison_event(settings, redis_client, tmp_path):
    # Given two workers (prefork, 2 processes each) and three log routes: a recorder, the state projection
    # and one whose effect fails on a poison event
    state = {"name": "state", "task": "tradebus.state.apply", "queue": "tradebus.state", "event_types": ["order.*"],
             "mode": "log"}  # fmt: skip
    routes = routes_file(tmp_path / "routes.json", [RECORD, state, POISON])
    keys = Keys(settings.key_prefix)
    symbols = [f"S{n:02d}" for n in range(20)]
    per_symbol = {s: [order(i, s, poison=(s == "S03" and i == 5)) for i in range(40)] for s in symbols}
    # interleaved across symbols, published singly and in mixed batches
    stream = [e for i in range(40) for e in (per_symbol[s][i] for s in random.sample(symbols, len(symbols)))]
    with (
        log_worker(settings, "a", routes) as a,
        log_worker(settings, "b", routes, beat=True) as b,
        publisher(settings, routes) as bus,
    ):
        for i in range(0, len(stream), 37):
            chunk = stream[i : i + 37]
            bus.publish_many(chunk) if i % 2 else [bus.publish(e) for e in chunk]
        for s in symbols:
            wait_for(lambda s=s: len(applied(redis_client, keys, "rec", s)) == 40, timeout=90,
                     what=f"{s} recorded\n{tail(a)}\n{tail(b)}")  # fmt: skip
        wait_for(lambda: len(applied(redis_client, keys, "poison", "S03")) == 39, timeout=60,
                 what=f"the poison route past its poison event\n{tail(a)}\n{tail(b)}")  # fmt: skip
        wait_for(lambda: all(get_order(redis_client, keys, s, f"{s}-39") for s in symbols), what="state projected")
    for s in symbols:  # each event once, in publish order, whichever worker drained which batch
        assert applied(redis_client, keys, "rec", s) == [e.event_id for e in per_symbol[s]]
    assert applied(redis_client, keys, "poison", "S03") == [
        e.event_id for e in per_symbol["S03"] if not e.data["poison"]
    ]
    (dl,) = list_dead_letters(redis_client, keys)
    assert dl.route == "poison" and dl.event.event_id == per_symbol["S03"][5].event_id and dl.attempts == 3
    assert len(redis_client.smembers(f"{keys.prefix}:test:drainers")) >= 2  # more than one process drained


def test_drainer_sigkilled_mid_batch_is_taken_over_in_order_effects_once(settings, redis_client, tmp_path):
    routes = routes_file(tmp_path / "routes.json", [SLOW])
    keys = Keys(settings.key_prefix)
    events = [order(i, "XAUUSD") for i in range(150)]
    batches = f"{keys.prefix}:test:batches"
    # Given two workers (each with beat's wake job), one of them draining slow batches
    with (
        log_worker(settings, "a", routes, beat=True, concurrency=1, TRADEBUS_TEST_BATCH_DELAY="0.3") as a,
        log_worker(settings, "b", routes, beat=True, concurrency=1, TRADEBUS_TEST_BATCH_DELAY="0.3") as b,
    ):
        with publisher(settings, routes) as bus:
            bus.publish_many(events)
        wait_for(lambda: len(applied(redis_client, keys, "slow", "XAUUSD")) >= 20, timeout=60,
                 what=f"draining\n{tail(a)}\n{tail(b)}")  # fmt: skip
        # When: the whole worker that drains (main process and pool) is killed inside a batch
        started = int(redis_client.get(batches))
        wait_for(lambda: int(redis_client.get(batches)) > started, what="a new batch under way")
        group = os.getpgid(int(redis_client.get(f"{keys.prefix}:test:drainer_pid")))
        dead, survivor = (a, b) if group == a.pid else (b, a)
        done_before = len(applied(redis_client, keys, "slow", "XAUUSD"))
        os.killpg(group, signal.SIGKILL)
        killed_at = time.monotonic()
        assert dead.wait(10) == -signal.SIGKILL
        # Then: the other one (its beat finds pending entries and no lease holder) takes over within CLAIM_AFTER
        wait_for(lambda: len(applied(redis_client, keys, "slow", "XAUUSD")) > done_before, timeout=30,
                 what=f"the survivor taking over\n{tail(survivor)}")  # fmt: skip
        took = time.monotonic() - killed_at
        wait_for(lambda: len(applied(redis_client, keys, "slow", "XAUUSD")) == len(events), timeout=90,
                 what=f"the rest drained by the survivor\n{tail(survivor)}")  # fmt: skip
    assert applied(redis_client, keys, "slow", "XAUUSD") == [e.event_id for e in events]  # in order, each once
    # lease TTL (1.5 s) + a beat tick (0.5 s) + the grace (0.3 s) + one batch (0.3 s), with slack
    assert took < CLAIM_AFTER + 1.5, took


def test_redis_crash_with_aof_mid_drain(settings, own_redis, tmp_path):
    # Given the bus and the broker on a Redis this test owns (AOF, fsync always)
    prefix = settings.key_prefix
    s = LoadEnvironmentVariables(None, redis_url=own_redis.url, celery_broker_url=own_redis.url.replace("/0", "/1"),
                                 key_prefix=prefix, broker_key_prefix=f"{prefix}:")  # fmt: skip
    routes = routes_file(tmp_path / "routes.json", [SLOW])
    keys = Keys(s.key_prefix)
    events = {sym: [order(i, sym) for i in range(120)] for sym in ("AAA", "BBB")}
    c = redis.Redis.from_url(own_redis.url, decode_responses=True, socket_timeout=5)
    with log_worker(s, "a", routes, beat=True, TRADEBUS_TEST_BATCH_DELAY="0.02") as a:
        with publisher(s, routes) as bus:
            for i in range(120):
                bus.publish_many([events["AAA"][i], events["BBB"][i]])
        wait_for(lambda: len(applied(c, keys, "slow", "AAA")) >= 20, timeout=60, what=f"draining\n{tail(a)}")
        # When: Redis crashes (SIGKILL) mid-drain and comes back from its AOF
        own_redis.kill()
        own_redis.start()
        # Then: the worker reconnects and every event is applied once, in order
        for sym, evs in events.items():
            wait_for(lambda sym=sym, evs=evs: _applied_or_none(c, keys, sym) == len(evs), timeout=90,
                     what=f"{sym} drained after the restart\n{tail(a)}")  # fmt: skip
            assert applied(c, keys, "slow", sym) == [e.event_id for e in evs]
    c.close()


def _applied_or_none(c: redis.Redis, keys: Keys, symbol: str) -> int | None:
    try:
        return len(applied(c, keys, "slow", symbol))
    except redis.ConnectionError:
        return None
