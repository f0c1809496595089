"""A worker SIGKILLed as a whole (main process and pool: its process group) loses nothing for long: what it
held runs on another worker within TRADEBUS_WORKER_LOST_TIMEOUT, once; a live worker keeps what it holds,
however long its countdown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bus.config import Settings
from bus.core.keys import Keys
from bus.core.state import get_order
from bus.events.model import TradeEvent
from celery_app import make_celery
from celery_app.config import recovery_options
from tests.helpers import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.celery, pytest.mark.faults, pytest.mark.slow]
LOST_TIMEOUT = 6.0  # seconds; production default 60
RECOVERY = recovery_options(LOST_TIMEOUT)
HELD_FOR = 3 * RECOVERY["visibility_timeout"]  # a countdown well past the timeout
INCLUDE = "tests.worker_tasks,tests.worker.held_tasks"


@pytest.fixture
def start_worker(subprocess_worker, worker_log):  # type: ignore[no-untyped-def]
    """``with start_worker(settings, name) as proc:`` a prefork worker (one process) on tradebus.state, in its
    own process group, with the test tasks and a short TRADEBUS_WORKER_LOST_TIMEOUT; ready when it yields."""

    @contextlib.contextmanager
    def start(s: Settings, name: str) -> Iterator[subprocess.Popen[bytes]]:
        env = {"TRADEBUS_WORKER_LOST_TIMEOUT": str(LOST_TIMEOUT)}
        with subprocess_worker(s, queues="tradebus.state", include=INCLUDE, name=name, extra_env=env) as proc:
            wait_for(lambda: " ready." in worker_log(s, name), timeout=60, what=f"worker {name} ready")
            yield proc

    return start


def _kill_group(proc: subprocess.Popen[bytes]) -> float:
    """SIGKILL the worker's main process and pool at once (a machine lost, an OOM kill of the parent)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    return time.monotonic()


def _held(broker: redis.Redis, s: Settings) -> dict[str, float]:
    """'task id:retries' -> score in ``unacked_index`` of each message a worker holds unacked."""
    prefix = f"{s.key_prefix}:"
    names = {}
    for tag, raw in broker.hgetall(f"{prefix}unacked").items():
        headers = json.loads(raw)[0]["headers"]
        names[tag] = f"{headers['id']}:{headers['retries']}"
    return {
        names[t]: score for t, score in broker.zrange(f"{prefix}unacked_index", 0, -1, withscores=True) if t in names
    }


def _queued(broker: redis.Redis, s: Settings) -> int:
    return sum(int(broker.llen(k)) for k in broker.keys(f"{s.key_prefix}:tradebus.state*"))


def _send(app, task: str, ev: TradeEvent, task_id: str) -> None:  # type: ignore[no-untyped-def]
    app.send_task(task, args=[ev.to_json()], kwargs={"route": "state"}, task_id=task_id, queue="tradebus.state")


def _k(s: Settings, name: str) -> str:
    return f"{s.key_prefix}:test:{name}"


@pytest.fixture
def broker(settings: Settings) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(settings.broker_url)
    yield c
    c.close()


def test_dead_workers_task_runs_elsewhere_in_time_while_a_live_workers_countdown_stays(
    settings: Settings, redis_client: redis.Redis, broker: redis.Redis, start_worker: Any
) -> None:
    s, app, keys = settings, make_celery(settings, set_as_current=False), Keys(settings.key_prefix)
    ev = TradeEvent.create_order_partially_filled("XAUUSD", "d1", 2000.0, 0.25)
    with start_worker(s, "doomed") as doomed:
        # Given: the doomed worker mid-task (its effect applied, not acked) ...
        _send(app, "tradebus_test.apply_then_block", ev, "mid-task")
        wait_for(lambda: redis_client.get(_k(s, "pid")), timeout=30, what="the task started on the doomed worker")
        with start_worker(s, "spare") as spare:
            # ... and the spare worker holding a retry whose countdown is 3x the visibility timeout
            redis_client.set(_k(s, "countdown"), HELD_FOR)
            _send(app, "tradebus_test.retry_later", ev, "countdown")
            first_score = wait_for(lambda: _held(broker, s).get("countdown:1"), what="the retry held by the spare")
            # When: the doomed worker's whole process group is killed
            killed_at = _kill_group(doomed)
            # Then: its task runs again, on the spare, within the bound; its effect stays applied once
            wait_for(
                lambda: redis_client.llen(_k(s, "outcomes")) == 2, timeout=LOST_TIMEOUT + 30, what="the task again"
            )
            recovered_in = time.monotonic() - killed_at
            print(f"\nrecovered {recovered_in:.2f}s after SIGKILL (bound {LOST_TIMEOUT:g}s)")
            assert recovered_in <= LOST_TIMEOUT
            assert redis_client.lrange(_k(s, "outcomes"), 0, -1) == ["1", "0"]
            assert get_order(redis_client, keys, "XAUUSD", "d1")["filled_volume"] == "0.25"
            # ...while the spare's held retry was kept fresh, never restored, and runs once, at its time
            assert _held(broker, s)["countdown:1"] > first_score + 2 * RECOVERY["unacked_refresh_interval"]
            wait_for(lambda: redis_client.llen(_k(s, "attempts")) == 2, timeout=HELD_FOR + 30, what="the retry")
            wait_for(lambda: not _held(broker, s) and not _queued(broker, s), what="nothing held or queued")
            assert proc_alive(spare)
    attempts = redis_client.lrange(_k(s, "attempts"), 0, -1)
    assert [a.split("|", 1)[0].split("-", 1)[0] for a in attempts] == ["spare", "spare"]
    assert [a.split("|", 1)[1] for a in attempts] == ["0|0", "1|0"]  # retried once, never redelivered


def test_retry_held_by_a_dead_worker_runs_elsewhere_in_time(
    settings: Settings, redis_client: redis.Redis, broker: redis.Redis, start_worker: Any
) -> None:
    s, app = settings, make_celery(settings, set_as_current=False)
    ev = TradeEvent.create_order_created("XAUUSD", "r1", "BUY", 2000.0, 1.0)
    blocker = TradeEvent.create_order_created("XAUUSD", "blocker", "BUY", 2000.0, 1.0)
    with start_worker(s, "spare") as spare:
        # Given: the spare busy (so it takes nothing else), the doomed worker holding a retry countdown
        _send(app, "tradebus_test.apply_then_block", blocker, "blocker")
        wait_for(lambda: redis_client.get(_k(s, "pid")), timeout=30, what="the spare busy")
        with start_worker(s, "doomed") as doomed:
            redis_client.set(_k(s, "countdown"), 2)
            _send(app, "tradebus_test.retry_later", ev, "retry")
            wait_for(lambda: redis_client.llen(_k(s, "attempts")) == 1 and "retry:1" in _held(broker, s),
                     timeout=30, what="the retry held by the doomed worker")  # fmt: skip
            # When: the doomed worker's process group is killed, and the spare frees up
            killed_at = _kill_group(doomed)
        redis_client.set(_k(s, "release"), 1)
        # Then: the retry runs on the spare within the bound (its countdown long past), once
        wait_for(
            lambda: redis_client.llen(_k(s, "attempts")) == 2, timeout=LOST_TIMEOUT + 30, what="the retry elsewhere"
        )
        recovered_in = time.monotonic() - killed_at
        print(f"\nretry recovered {recovered_in:.2f}s after SIGKILL (bound {LOST_TIMEOUT:g}s)")
        assert recovered_in <= LOST_TIMEOUT
        wait_for(lambda: not _held(broker, s) and not _queued(broker, s), what="nothing held or queued")
        assert proc_alive(spare)
    first, second = redis_client.lrange(_k(s, "attempts"), 0, -1)
    assert first.startswith("doomed-") and first.endswith("|0|0")
    assert second.startswith("spare-") and second.endswith("|1|1")  # the retry itself, redelivered


def proc_alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None
