"""Faults with real subprocess workers and a broker the test owns."""

from __future__ import annotations

import os
import signal

import pytest

from bus.config import LoadEnvironmentVariables
from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.core.state import get_order
from bus.dispatch.deadletters import list_dead_letters
from bus.dispatch.routing import Route, RoutingTable
from bus.events.model import TradeEvent
from celery_app import make_celery
from celery_app.config import REDELIVERY_CAP
from tests.helpers import dispatcher_for, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.celery, pytest.mark.faults, pytest.mark.slow]


def _k(s, name):
    return f"{s.key_prefix}:test:{name}"


def test_worker_killed_mid_task_runs_again_effect_once(
    settings, redis_client, celery_app, subprocess_worker, worker_log
) -> None:
    keys = Keys(settings.key_prefix)
    ev = TradeEvent.create_order_partially_filled("XAUUSD", "k1", 2000.0, 0.25)
    with subprocess_worker(settings, queues="tradebus.state", include="tests.worker_tasks") as proc:
        celery_app.send_task("tradebus_test.apply_then_block", args=[ev.to_json()], kwargs={"route": "state"},
                             task_id=f"{ev.event_id}:state", queue="tradebus.state")  # fmt: skip
        pid = int(wait_for(lambda: redis_client.get(_k(settings, "pid")), timeout=60, what="task started"))
        assert pid != proc.pid  # the pool child, not the supervisor
        os.kill(pid, signal.SIGKILL)  # mid-task: effect applied, not acked
        wait_for(lambda: redis_client.llen(_k(settings, "outcomes")) == 2, timeout=60,
                 what=f"the task to run again\n{worker_log(settings)[-3000:]}")  # fmt: skip
    assert redis_client.lrange(_k(settings, "outcomes"), 0, -1) == ["1", "0"]  # ran twice, applied once
    assert get_order(redis_client, keys, "XAUUSD", "k1")["filled_volume"] == "0.25"


def test_poison_task_stops_at_redelivery_cap(settings, redis_client, celery_app, subprocess_worker, worker_log) -> None:
    keys = Keys(settings.key_prefix)
    ev = TradeEvent.create_trade_failed("XAUUSD", "poison")
    with subprocess_worker(settings, queues="tradebus.notify", include="tests.worker_tasks"):
        celery_app.send_task("tradebus_test.crash", args=[ev.to_json()], kwargs={"route": "poison"},
                             task_id=f"{ev.event_id}:poison", queue="tradebus.notify")  # fmt: skip
        (dl,) = wait_for(lambda: list_dead_letters(redis_client, keys), timeout=90,
                         what=f"the poison task dead-lettered\n{worker_log(settings)[-3000:]}")  # fmt: skip
        # the worker survives and keeps consuming
        celery_app.send_task(
            "tradebus_test.record", args=[ev.to_json()], kwargs={"route": "after"}, queue="tradebus.notify"
        )
        wait_for(lambda: redis_client.llen(_k(settings, "ran")) == 1, timeout=30, what="the next task")
    assert int(redis_client.get(_k(settings, "crash_runs"))) == REDELIVERY_CAP + 1
    assert "redelivered more than" in dl.reason and dl.task == "tradebus_test.crash"


def test_broker_down_during_publishes_then_redispatch(settings, own_redis, redis_client, own_worker) -> None:
    # Given: the bus on the shared Redis, the Celery broker on a server this test owns
    s = LoadEnvironmentVariables(None, redis_url=settings.bus_url, celery_broker_url=own_redis.url,
                                 key_prefix=settings.key_prefix, redis_connect_timeout=0.5,
                                 redis_socket_timeout=1.0)  # fmt: skip
    table = RoutingTable([Route("state", "tradebus.state.apply", "tradebus.state", ("order.*",))])
    app = make_celery(s, table, set_as_current=False)
    keys = Keys(s.key_prefix)
    bus = RedisEventBus(settings=s, dispatcher=dispatcher_for(app, s))
    assert not bus.dispatcher.stages_in_bus_pipeline
    events = [TradeEvent.create_order_created("XAUUSD", f"b{i}", "BUY", 1.0 + i, 1.0) for i in range(30)]
    before = [bus.publish(e) for e in events[:10]]
    own_redis.stop()
    during = [bus.publish(e) for e in events[10:]]  # returns: logged + broadcast, tasks not enqueued
    assert all(r.dispatched == ("state",) for r in before)
    assert all(r.not_dispatched == ("state",) and r.log_id for r in during)
    assert redis_client.zcard(keys.pending_dispatch_for("XAUUSD")) == 20
    # strict mode raises instead (the event is still logged and left pending)
    strict = RedisEventBus(settings=s, dispatcher=dispatcher_for(app, s, strict=True))
    with pytest.raises(Exception, match="could not enqueue|unreachable"):
        strict.publish(TradeEvent.create_order_created("XAUUSD", "strict", "BUY", 9.0, 1.0))
    # When: the broker is back and beat's job runs
    own_redis.start()
    assert bus.dispatcher.redispatch_missed(grace_seconds=0) == 21
    assert redis_client.zcard(keys.pending_dispatch_for("XAUUSD")) == 0
    with own_worker(app, queues="tradebus.state"):
        wait_for(lambda: all(get_order(redis_client, keys, "XAUUSD", f"b{i}") for i in range(30))
                 and get_order(redis_client, keys, "XAUUSD", "strict"), what="every event projected")  # fmt: skip
    assert bus.dispatcher.redispatch_missed(grace_seconds=0) == 0
    bus.close()
    strict.close()
