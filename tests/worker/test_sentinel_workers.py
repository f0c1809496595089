"""Workers and beat on a Sentinel-managed Redis (bus and broker, configured by one redis+sentinel:// URL)
across a failover: ``celery -A celery_app worker`` and ``celery -A celery_app beat`` as production runs
them, SENTINEL FAILOVER or the master SIGKILLed while events are published with TRADEBUS_PUBLISH_REPLICAS=1.
The worker follows the master (celery_app.transport's SentinelTransport), nothing publish() confirmed is
lost, a log route applies every logged event once, in log order, an event route projects every logged
order, and beat's jobs reach the new master (an entry only beat's wake job can drain is drained). And on
the Sentinel broker, as on a redis:// one, a worker SIGKILLed as a whole has its task run elsewhere
within TRADEBUS_WORKER_LOST_TIMEOUT (the held-messages heartbeat of celery_app.transport)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bus import BusConnectionError, RedisEventBus, TradeEvent
from bus.config import Settings
from bus.core.durability import NotReplicatedError
from bus.core.keys import Keys
from bus.core.state import get_order
from celery_app import make_celery
from tests.helpers import wait_for
from tests.logroute_effects import applied, routes_file
from tests.subprocess_workers import stop_group
from tests.topology_servers import SentinelSet
from tests.worker.test_dead_worker import INCLUDE, LOST_TIMEOUT, _k, _kill_group, _send
from tests.worker.test_logroutes_workers import ENV, RECORD, log_worker, publisher, tail

pytestmark = [pytest.mark.celery, pytest.mark.faults, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SYMBOLS = ("SEN1", "SEN2", "SEN3")
#: event route: one state.apply task message per order event (the log route RECORD reads the log itself)
STATE = {"name": "state", "task": "tradebus.state.apply", "queue": "tradebus.state", "event_types": ["order.*"]}
#: beat's jobs often, and a pending dispatch re-sent a second after it was recorded
BEAT_ENV = {**ENV, "TRADEBUS_BEAT_REDISPATCH_INTERVAL": "1", "TRADEBUS_RECONCILE_REDISPATCH_GRACE": "1"}
#: seconds publishing may stay impossible across the switch (down-after 0.4 s, then the election)
OUTAGE_BOUND = 20.0


#: a worker, beat and the publisher load this machine: a master must be silent for 2 s to be called down
#: (at 0.4 s a loaded one was, and Sentinel failed over again, mid-test)
DOWN_AFTER_MS = 2000


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    topology = SentinelSet(down_after_ms=DOWN_AFTER_MS).start()
    yield topology
    topology.close()


def order(i: int) -> TradeEvent:
    symbol = SYMBOLS[i % len(SYMBOLS)]
    return TradeEvent.create_order_created(symbol, f"{symbol}-{i}", "BUY", 100.0 + i, 1.0)


@contextlib.contextmanager
def beat(settings: Settings, routes: str) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A celery_app beat``: a process of its own, as operators run it."""
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{settings.key_prefix}-beat.log"
    cmd = [sys.executable, "-m", "celery", "-A", "celery_app", "beat", "-l", "INFO",
           "-s", str(log_path.with_suffix(".schedule"))]  # fmt: skip
    env = {**os.environ, "REDIS_URL": settings.bus_url, "TRADEBUS_KEY_PREFIX": settings.key_prefix,
           "TRADEBUS_BROKER_KEY_PREFIX": settings.broker_key_prefix, "TRADEBUS_ROUTES_FILE": routes,
           "PYTHONPATH": str(REPO), **BEAT_ENV}  # fmt: skip
    env.pop("CELERY_BROKER_URL", None)  # derived from REDIS_URL: the Sentinel master's next database
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log_path  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        stop_group(proc)


def logged_ids(client: redis.Redis, keys: Keys, symbol: str) -> list[str] | None:
    """Event ids in ``symbol``'s log on the current master (None while it is changing)."""
    try:
        return [TradeEvent.from_json(f[b"event"]).event_id for _, f in client.xrange(keys.log(symbol))]
    except redis.RedisError:
        return None


@pytest.mark.parametrize("fault", ["SENTINEL FAILOVER", "SIGKILL master"])
def test_workers_and_beat_carry_on_across_a_failover(
    sentinels: SentinelSet, key_prefix: str, tmp_path: Path, fault: str
) -> None:
    settings = Settings(redis_url=sentinels.url, key_prefix=key_prefix, broker_key_prefix=f"{key_prefix}:",
                        publish_replicas=1, publish_replicas_timeout_ms=500, redis_connect_timeout=1.0,
                        redis_socket_timeout=2.0)  # fmt: skip
    assert settings.broker_url.startswith("sentinel://")
    routes = routes_file(tmp_path / "routes.json", [RECORD, STATE])
    keys = Keys(key_prefix)
    fault_at, total = 60, 150
    confirmed: list[str] = []
    old = sentinels.master_port()
    switched = threading.Event()

    def switch() -> None:
        if fault == "SENTINEL FAILOVER":
            sentinels.failover()  # the old master turns replica by itself
        else:
            port = sentinels.kill_master()
            sentinels.wait_for_new_master(port)
            sentinels.rejoin(port)  # a replica again, so WAIT 1 can be met
        switched.set()

    with (
        log_worker(settings, "w", routes, concurrency=2, **BEAT_ENV) as worker,
        beat(settings, routes) as beat_proc,
        publisher(settings, routes) as bus,
    ):
        # When events are published through the switch (a caller retrying BusConnectionError, each attempt
        # bounded; NotReplicatedError means logged on the master but not confirmed: not retried)
        built: dict[str, TradeEvent] = {}
        i = 0
        deadline = time.monotonic() + OUTAGE_BOUND
        while i < total or not switched.is_set():
            if i == fault_at:
                threading.Thread(target=switch, daemon=True).start()
                deadline = time.monotonic() + OUTAGE_BOUND
            e = built.get(f"#{i}") or built.setdefault(f"#{i}", order(i))  # a retry sends the same event
            built[e.event_id] = e
            try:
                bus.publish(e)
                confirmed.append(e.event_id)
            except NotReplicatedError:
                pass
            except BusConnectionError:
                assert time.monotonic() < deadline, "publishing stayed impossible past the outage bound"
                continue
            i += 1
        assert sentinels.master_port() != old and sentinels.failovers() == 1  # ours, and no spurious other
        assert len(confirmed) >= total - fault_at  # most of them: only the switch's window is unconfirmed

        # Then nothing confirmed is lost and the log route applied each logged event once, in log order, on
        # the new master
        client = sentinels.master().client()
        logs = {s: wait_for(lambda s=s: logged_ids(client, keys, s), 10, "the new master's log") for s in SYMBOLS}
        in_log = {x for ids in logs.values() for x in ids}
        assert set(confirmed) <= in_log
        for s in SYMBOLS:
            wait_for(lambda s=s: applied(client, keys, "rec", s) == logs[s], 90,
                     f"{s}: each logged event applied once, in log order\n{tail(worker)}")  # fmt: skip

        # ...and the event route runs on the new master: an order published now is projected. (Not every
        # order of the switch's window: a task message a worker popped as the master switched can be lost,
        # kombu records it unacked in a second write that the demoted or dead master never ships; README,
        # "Sentinel and RabbitMQ". Log routes read the log instead.)
        late = order(total + 2)
        sentinels.wait_for_online_replica()  # WAIT 1 can be met: the old master is a replica in sync again
        bus.publish(late)
        wait_for(lambda: get_order(client, keys, late.symbol, late.data["order_id"]), 60,
                 f"an order published after the switch projected\n{tail(worker)}")  # fmt: skip

        # ...and beat's wake job runs against the new master: an entry logged with no wake-up (a bus with
        # no dispatcher) is drained only by it
        with RedisEventBus(settings=settings.model_copy(update={"dispatch": False}), key_prefix=key_prefix) as quiet:
            lone = order(total + 1)
            quiet.publish(lone)
        wait_for(lambda: applied(client, keys, "rec", lone.symbol)[-1:] == [lone.event_id], 60,
                 f"beat woke the drain of an entry no publish woke\n{tail(beat_proc)}\n{tail(worker)}")  # fmt: skip
        assert worker.poll() is None and beat_proc.poll() is None
        assert sentinels.failovers() == 1
        client.close()


def test_a_worker_killed_on_the_sentinel_broker_has_its_task_run_elsewhere_in_time(
    sentinels: SentinelSet, key_prefix: str, subprocess_worker: Any, worker_log: Any
) -> None:
    s = Settings(redis_url=sentinels.url, key_prefix=key_prefix, broker_key_prefix=f"{key_prefix}:")
    app = make_celery(s, set_as_current=False)
    client = sentinels.master().client(decode_responses=True)
    ev = TradeEvent.create_order_partially_filled("XAUUSD", "d1", 2000.0, 0.25)
    env = {"TRADEBUS_WORKER_LOST_TIMEOUT": str(LOST_TIMEOUT)}

    def start(name: str) -> Any:
        return subprocess_worker(s, queues="tradebus.state", include=INCLUDE, name=name, extra_env=env)

    with start("doomed") as doomed:
        wait_for(lambda: " ready." in worker_log(s, "doomed"), 60, "the doomed worker ready")
        # Given the doomed worker mid-task (its effect applied, the message not acked)
        _send(app, "tradebus_test.apply_then_block", ev, "mid-task")
        wait_for(lambda: client.get(_k(s, "pid")), 30, "the task started on the doomed worker")
        with start("spare") as spare:
            wait_for(lambda: " ready." in worker_log(s, "spare"), 60, "the spare worker ready")
            # When its whole process group is killed
            killed_at = _kill_group(doomed)
            # Then the spare runs the task again within the bound; the effect stays applied once
            wait_for(lambda: client.llen(_k(s, "outcomes")) == 2, LOST_TIMEOUT + 30,
                     f"the task again\n{worker_log(s, 'spare')[-2000:]}")  # fmt: skip
            assert time.monotonic() - killed_at <= LOST_TIMEOUT
            assert client.lrange(_k(s, "outcomes"), 0, -1) == ["1", "0"]
            assert get_order(client, Keys(key_prefix), "XAUUSD", "d1")["filled_volume"] == "0.25"
            assert spare.poll() is None
    client.close()
