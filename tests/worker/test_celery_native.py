"""The bridge's task messages behave like Celery's own: publish signals and task-sent events, route
options (ignore_result, expires, countdown), Celery's router, task_always_eager, a result backend, user
configuration and task modules given by settings."""

from __future__ import annotations

import base64
import json
import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from celery import signals
from celery.result import AsyncResult

from bus.config import LoadEnvironmentVariables
from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.dispatch.deadletters import list_dead_letters
from bus.dispatch.dispatcher import Dispatcher
from bus.dispatch.messages import redis_queue_key
from bus.dispatch.routing import RetryPolicy, Route, RoutingTable
from bus.events.model import TradeEvent
from celery_app import make_celery
from tests.helpers import dispatcher_for, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.celery]
RECORD = "tradebus_test.record"
THREE = RoutingTable([Route("a", RECORD, "tradebus.state"), Route("b", RECORD, "tradebus.risk"),
                      Route("c", RECORD, "tradebus.notify")])  # fmt: skip


def _fill(order: str = "o1") -> TradeEvent:
    return TradeEvent.create_order_filled("XAUUSD", order, 2000.0, 1.0)


def _queued(settings, queue: str) -> list[dict[str, Any]]:
    """The messages waiting on ``queue`` (under the test's broker key prefix), oldest first."""
    broker = redis.Redis.from_url(settings.broker_url)
    raw = broker.lrange(redis_queue_key(queue, 0, settings.broker_key_prefix), 0, -1)
    broker.close()
    return [json.loads(m) for m in reversed(raw)]


def _k(settings, name: str) -> str:
    return f"{settings.key_prefix}:test:{name}"


class Recorder:
    """Receivers of both publish signals (connected strongly, disconnected by ``close``)."""

    def __init__(self, settings) -> None:
        self.settings, self.seen = settings, []
        signals.before_task_publish.connect(self.before, weak=False)
        signals.after_task_publish.connect(self.after, weak=False)

    def before(self, sender: str, routing_key: str, headers: dict[str, Any], **_: Any) -> None:
        self.seen.append(("before", sender, routing_key, len(_queued(self.settings, routing_key))))
        headers["x_trace"] = f"trace-of-{headers['id']}"  # what a tracer's propagator does

    def after(self, sender: str, routing_key: str, headers: dict[str, Any], **_: Any) -> None:
        self.seen.append(("after", sender, routing_key, len(_queued(self.settings, routing_key))))

    def close(self) -> None:
        signals.before_task_publish.disconnect(self.before)
        signals.after_task_publish.disconnect(self.after)


@pytest.fixture
def recorder(settings):
    r = Recorder(settings)
    yield r
    r.close()


def test_signals_fire_around_the_transaction_that_stages_the_messages(settings, recorder) -> None:
    app = make_celery(settings, THREE, set_as_current=False)
    with RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus:
        assert bus.dispatcher.stages_in_bus_pipeline
        ev = _fill()
        assert bus.publish(ev).dispatched == ("a", "b", "c")
    # before: each message about to be staged (nothing on its queue yet); after: all three committed
    assert recorder.seen == [
        ("before", RECORD, "tradebus.state", 0), ("before", RECORD, "tradebus.risk", 0),
        ("before", RECORD, "tradebus.notify", 0),
        ("after", RECORD, "tradebus.state", 1), ("after", RECORD, "tradebus.risk", 1),
        ("after", RECORD, "tradebus.notify", 1),
    ]  # fmt: skip
    (message,) = _queued(settings, "tradebus.risk")
    assert message["headers"]["x_trace"] == f"trace-of-{ev.event_id}:b"  # the receiver's header was written


def test_signals_fire_with_a_separate_broker_too(settings, own_redis, recorder) -> None:
    s = LoadEnvironmentVariables(None, redis_url=own_redis.url, celery_broker_url=settings.broker_url,
                                 key_prefix=settings.key_prefix,
                                 broker_key_prefix=settings.broker_key_prefix)  # fmt: skip
    app = make_celery(s, THREE, set_as_current=False)
    with RedisEventBus(settings=s, dispatcher=dispatcher_for(app, s)) as bus:
        assert not bus.dispatcher.stages_in_bus_pipeline
        assert bus.publish(_fill()).dispatched == ("a", "b", "c")
    assert [(when, queued) for when, _, _, queued in recorder.seen] == [("before", 0)] * 3 + [("after", 1)] * 3


def test_signals_fire_for_the_executors_sequenced_publish(settings, recorder) -> None:
    from bus.core.sequenced import SequencedPublisher

    app = make_celery(settings, THREE, set_as_current=False)
    with RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus:
        outbox = SequencedPublisher(bus.publisher, "executor-1", "outbox-a")
        ev = _fill()
        (receipt,) = outbox.publish([(1, ev)])
        assert receipt.dispatched == ("a", "b", "c")
        assert [when for when, *_ in recorder.seen] == ["before"] * 3 + ["after"] * 3
        recorder.seen.clear()
        (again,) = outbox.publish([(1, ev)])  # the same number again: already logged, nothing sent
        assert again.already_logged
        assert "after" not in [when for when, *_ in recorder.seen]


def test_no_receivers_no_work(settings) -> None:
    d = dispatcher_for(make_celery(settings, THREE, set_as_current=False), settings)
    assert not d.signals.active  # publish() skips the signal machinery altogether


def test_task_sent_events_after_the_commit(settings) -> None:
    app = make_celery(settings, THREE, set_as_current=False, task_send_sent_event=True)
    sent: list[dict[str, Any]] = []
    with app.connection() as conn:
        receiver = app.events.Receiver(conn, handlers={"task-sent": sent.append})
        listener = threading.Thread(target=receiver.run, daemon=True)
        listener.start()
        try:
            with RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus:
                # the receiver subscribes asynchronously: publish until its events arrive
                wait_for(lambda: bus.publish(_fill()) and sent, timeout=20, interval=0.2, what="task-sent events")
                ev = _fill("o-last")
                bus.publish(ev)
                wait_for(lambda: len([e for e in sent if e["uuid"].startswith(ev.event_id)]) == 3, what="3 events")
        finally:
            receiver.should_stop = True
            listener.join(10)
    by_queue = {e["queue"]: e for e in sent if e["uuid"].startswith(ev.event_id)}
    assert set(by_queue) == {"tradebus.state", "tradebus.risk", "tradebus.notify"}
    e = by_queue["tradebus.risk"]
    assert (e["uuid"], e["name"], e["routing_key"], e["kwargs"]) == (f"{ev.event_id}:b", RECORD, "tradebus.risk",
                                                                   "{'route': 'b'}")  # fmt: skip


def test_route_options_reach_the_message(settings, celery_app) -> None:
    table = RoutingTable([Route("late", RECORD, "tradebus.state", priority=6, ignore_result=False,
                                expires=600, countdown=30)])  # fmt: skip
    app = make_celery(settings, table, set_as_current=False)
    before = datetime.now().astimezone()
    with RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus:
        bus.publish(_fill())
    broker = redis.Redis.from_url(settings.broker_url)
    (raw,) = broker.lrange(redis_queue_key("tradebus.state", 6, settings.broker_key_prefix), 0, -1)
    message = json.loads(raw)
    headers = message["headers"]
    assert headers["ignore_result"] is False and message["properties"]["priority"] == 6
    eta, expires = datetime.fromisoformat(headers["eta"]), datetime.fromisoformat(headers["expires"])
    assert timedelta(seconds=29) < eta - before < timedelta(seconds=35)
    assert timedelta(seconds=599) < expires - before < timedelta(seconds=605)
    assert json.loads(base64.b64decode(message["body"]))[1] == {"route": "late"}


def test_a_route_without_a_queue_follows_the_apps_router_and_user_config_wins(settings, own_worker) -> None:
    table = RoutingTable([Route("routed", RECORD, event_types=("order.*",))])
    app = make_celery(settings, table, set_as_current=False)
    # the user's configuration, on top of tradebus's: their router, and one of tradebus's settings changed
    app.config_from_object({"task_routes": {"tradebus_test.*": {"queue": "user.routed"}}, "task_acks_late": False})
    assert app.conf.task_acks_late is False and app.conf.broker_url == settings.broker_url
    assert app.conf.task_default_queue == "tradebus.state"  # what the user left alone stays tradebus's
    d = dispatcher_for(app, settings)
    assert d.queue_of(table.get("routed")) == "user.routed"
    with RedisEventBus(settings=settings, dispatcher=d) as bus, own_worker(app):  # no -Q: every routed queue
        bus.publish(_fill())
        client = redis.Redis.from_url(settings.bus_url, decode_responses=True)
        # the worker consumed the router's queue without being told (no -Q)
        wait_for(lambda: client.lrange(_k(settings, "ran"), 0, -1), what="the task from user.routed")


def test_task_always_eager_runs_routed_tasks_inline(settings, redis_client) -> None:
    fast = RetryPolicy(max_retries=2, backoff=0.01, backoff_max=0.02)
    table = RoutingTable([
        Route("rec", RECORD, "tradebus.state", ("order.*",)),
        Route("flaky", "tradebus_test.flaky", "tradebus.notify", ("order.*",), retry=fast),
    ])  # fmt: skip
    import tests.worker_tasks  # noqa: F401 - the test tasks, registered on the app

    app = make_celery(settings, table, set_as_current=False, task_always_eager=True)
    with RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus:
        assert not bus.dispatcher.stages_in_bus_pipeline
        receipt = bus.publish(_fill())
        # no worker anywhere: publish() returned after the tasks ran, retries included
        assert receipt.dispatched == ("rec", "flaky")
        assert redis_client.lrange(_k(settings, "ran"), 0, -1) == ["rec|order.filled|XAUUSD"]
        assert redis_client.get(_k(settings, "attempts")) == "3"
        (dl,) = list_dead_letters(redis_client, Keys(settings.key_prefix))
        assert (dl.route, dl.attempts) == ("flaky", 3)
        assert redis_client.zcard(Keys(settings.key_prefix).pending_dispatch_for("XAUUSD")) == 0


def test_a_result_backend_stores_what_the_task_or_route_keeps(settings, own_worker) -> None:
    answer, orders = "tradebus_test.answer", ("order.*",)
    table = RoutingTable([
        Route("kept", answer, "tradebus.state", orders),  # the task says ignore_result=False
        Route("dropped", answer, "tradebus.state", orders, ignore_result=True),  # the route says otherwise
        Route("state", "tradebus.state.apply", "tradebus.state", orders, ignore_result=False),
    ])  # fmt: skip
    backend = settings.bus_url
    app = make_celery(settings, table, set_as_current=False, result_backend=backend,
                      result_backend_transport_options={"global_keyprefix": f"{settings.key_prefix}:"})  # fmt: skip
    ev = _fill()
    with RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus, own_worker(app):
        bus.publish(ev)
        kept = AsyncResult(f"{ev.event_id}:kept", app=app)
        assert kept.get(timeout=30) == {"route": "kept", "symbol": "XAUUSD", "trace": ""}
        assert kept.state == "SUCCESS"
        state = AsyncResult(f"{ev.event_id}:state", app=app)  # a tradebus task whose route keeps results
        assert state.get(timeout=30) == {"changed": True}
        dropped = AsyncResult(f"{ev.event_id}:dropped", app=app)
        wait_for(lambda: int(redis.Redis.from_url(settings.bus_url).hget(Keys(settings.key_prefix).stats(),
                                                                          "run:tradebus_test.answer") or 0) == 2,
                 what="both answers ran")  # fmt: skip
        assert dropped.state == "PENDING"  # the route said ignore_result: nothing stored


def test_user_tasks_by_settings_retried_and_dead_lettered_by_their_route(
    settings, redis_client, subprocess_worker, worker_log, tmp_path
) -> None:
    # Given: routes built in Python, written to the routes file the workers read; a task module named
    # only by TRADEBUS_TASK_MODULES; a worker started without -Q or -I
    table = RoutingTable([
        Route("fills", "user.fills.book", "user.fills", ("order.filled",),
              retry=RetryPolicy(max_retries=2, backoff=0.05, backoff_max=0.1)),
        Route("plain", "user.fills.plain", "user.fills", ("order.cancelled",)),
    ])  # fmt: skip
    routes_file = table.to_file(tmp_path / "routes.json")
    env = {"TRADEBUS_TASK_MODULES": "tests.worker.user_tasks", "TRADEBUS_ROUTES_FILE": str(routes_file)}
    s = LoadEnvironmentVariables(None, redis_url=settings.bus_url, celery_broker_url=settings.broker_url,
                                 key_prefix=settings.key_prefix, broker_key_prefix=settings.broker_key_prefix,
                                 routes_file=str(routes_file))  # fmt: skip
    keys = Keys(s.key_prefix)
    with (
        subprocess_worker(s, queues="", extra_env=env),
        RedisEventBus(settings=s, dispatcher=Dispatcher.from_settings(s)) as bus,
    ):
        ev = _fill()
        assert bus.publish(ev).dispatched == ("fills",)
        (dl,) = wait_for(lambda: list_dead_letters(redis_client, keys), timeout=60,
                         what=f"the fill dead-lettered\n{worker_log(s)[-3000:]}")  # fmt: skip
    assert redis_client.get(f"{s.key_prefix}:user:attempts") == "3"  # the route's max_retries=2, then dead
    assert (dl.route, dl.task, dl.attempts, dl.queue) == ("fills", "user.fills.book", 3, "user.fills")
    assert "ConnectionError: ledger unreachable (attempt 3)" in dl.reason
    log = worker_log(s)
    assert "route 'plain': task 'user.fills.plain' is a plain Celery task" in log
