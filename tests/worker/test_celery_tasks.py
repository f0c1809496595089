"""Real in-process workers: routing decides what runs; state is idempotent; retries; dead letters; JSON only."""

from __future__ import annotations

import json

import pytest

from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.core.state import get_order
from bus.dispatch.deadletters import list_dead_letters, purge, replay
from bus.dispatch.routing import RetryPolicy, Route, RoutingTable
from bus.events.model import TradeEvent
from tests.helpers import dispatcher_for, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.celery]
FAST = RetryPolicy(max_retries=3, backoff=0.01, backoff_max=0.05, jitter=True)


def _k(s, name):
    return f"{s.key_prefix}:test:{name}"


def _bus(settings, app, **kw):
    return RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings, **kw))


def test_route_table_decides_which_tasks_run(settings, redis_client, worker_app, worker) -> None:
    table = RoutingTable([
        Route("all_orders", "tradebus_test.record", "tradebus.state", ("order.*",)),
        Route("gold_fills", "tradebus_test.record", "tradebus.risk", ("order.filled",), symbols=("XAU*",)),
        Route("risk_alerts", "tradebus_test.record", "tradebus.notify", ("risk.*",)),
    ])  # fmt: skip
    app = worker_app(table)
    events = [
        TradeEvent.create_order_created("XAUUSD", "1", "BUY", 2000.0, 1.0),  # all_orders
        TradeEvent.create_order_filled("XAUUSD", "1", 2000.0, 1.0),  # all_orders, gold_fills
        TradeEvent.create_order_filled("EURUSD", "2", 1.1, 1.0),  # all_orders
        TradeEvent.create_stop_loss_hit("EURUSD", "p", 1.0),  # risk_alerts
        TradeEvent.create_signal_generated("XAUUSD", "s1", "LONG", "trend"),  # nothing
    ]
    expected = sorted([
        "all_orders|order.created|XAUUSD", "all_orders|order.filled|XAUUSD", "gold_fills|order.filled|XAUUSD",
        "all_orders|order.filled|EURUSD", "risk_alerts|risk.stop_loss_hit|EURUSD",
    ])  # fmt: skip
    with _bus(settings, app) as bus, worker():
        receipts = [bus.publish(e) for e in events]
        assert [r.dispatched for r in receipts] == [
            ("all_orders",),
            ("all_orders", "gold_fills"),
            ("all_orders",),
            ("risk_alerts",),
            (),
        ]
        wait_for(lambda: redis_client.llen(_k(settings, "ran")) >= len(expected), what="5 tasks")
    # after the block: a task counts its run after its body has recorded it
    stats = redis_client.hgetall(Keys(settings.key_prefix).stats())
    assert int(stats["run:tradebus_test.record"]) == len(expected)
    assert sorted(redis_client.lrange(_k(settings, "ran"), 0, -1)) == expected


def test_same_event_twice_changes_state_once(settings, redis_client, worker_app, worker) -> None:
    app = worker_app()
    keys = Keys(settings.key_prefix)
    d = dispatcher_for(app, settings)
    fill = TradeEvent.create_order_partially_filled("XAUUSD", "o1", 2000.0, 0.1, remaining_volume=0.2)
    created = TradeEvent.create_order_created("XAUUSD", "o1", "BUY", 2000.0, 0.3)
    state_route = d.routing.routes_for(fill)[:1]
    with worker():
        for ev in (created, fill, fill, fill):  # the fill delivered three times (re-dispatch, redelivery)
            d.send(ev, ev.to_json(), state_route)
        wait_for(lambda: int(redis_client.hget(keys.stats(), "run:tradebus.state.apply") or 0) == 4, what="4 runs")
    order = get_order(redis_client, keys, "XAUUSD", "o1")
    assert order["status"] == "partially_filled"
    assert order["filled_volume"] == "0.1", order


def test_retries_then_success(settings, redis_client, worker_app, worker) -> None:
    app = worker_app(RoutingTable([Route("flaky", "tradebus_test.flaky", "tradebus.notify",
                                          ("trade.*",), retry=FAST)]))  # fmt: skip
    redis_client.set(_k(settings, "succeed_on"), 3)
    ev = TradeEvent.create_trade_failed("XAUUSD", "boom")
    with _bus(settings, app) as bus, worker():
        assert bus.publish(ev).dispatched == ("flaky",)
        wait_for(lambda: redis_client.get(_k(settings, "done")), what="third attempt succeeds")
    stats = redis_client.hgetall(Keys(settings.key_prefix).stats())
    assert stats["retried:tradebus_test.flaky"] == "2" and stats["run:tradebus_test.flaky"] == "1"
    assert list_dead_letters(redis_client, Keys(settings.key_prefix)) == []


def test_exhausted_retries_dead_letter_then_replay(settings, redis_client, worker_app, worker) -> None:
    table = RoutingTable([Route("flaky", "tradebus_test.flaky", "tradebus.notify", ("trade.*",), retry=FAST)])
    app = worker_app(table)
    keys = Keys(settings.key_prefix)
    ev = TradeEvent.create_trade_failed("XAUUSD", "boom")
    with _bus(settings, app) as bus, worker():
        bus.publish(ev)
        (dl,) = wait_for(lambda: list_dead_letters(redis_client, keys), what="a dead letter")
        assert redis_client.get(_k(settings, "attempts")) == "4"  # 1 + max_retries
        assert (dl.route, dl.task, dl.attempts) == ("flaky", "tradebus_test.flaky", 4)
        assert dl.reason == "ConnectionError: attempt 4 failed" and dl.task_id == f"{ev.event_id}:flaky"
        assert dl.event.event_id == ev.event_id
        # When: the operator fixes the cause and replays it
        redis_client.set(_k(settings, "succeed_on"), 5)
        assert replay(redis_client, keys, bus.dispatcher) == [dl.id]
        wait_for(lambda: redis_client.get(_k(settings, "done")) == "5", what="replayed task succeeds")
    assert list_dead_letters(redis_client, keys) == [] and purge(redis_client, keys) == 0


def test_not_retryable_error_is_dead_lettered_at_once(settings, redis_client, worker_app, worker) -> None:
    app = worker_app(RoutingTable([Route("p", "tradebus_test.permanent", "tradebus.notify",
                                          ("trade.*",), retry=FAST)]))  # fmt: skip
    keys = Keys(settings.key_prefix)
    with _bus(settings, app) as bus, worker():
        bus.publish(TradeEvent.create_trade_failed("XAUUSD", "x"))
        (dl,) = wait_for(lambda: list_dead_letters(redis_client, keys), what="a dead letter")
    assert dl.attempts == 1 and dl.reason.startswith("not retryable: ValueError")
    assert redis_client.get(_k(settings, "attempts")) == "1"


def test_malformed_payload_is_dead_lettered_and_worker_goes_on(settings, redis_client, worker_app, worker) -> None:
    app = worker_app()
    keys = Keys(settings.key_prefix)
    good = TradeEvent.create_order_created("XAUUSD", "ok", "BUY", 1.0, 1.0)
    with worker():
        app.send_task("tradebus.state.apply", args=['{"event_type": "order.created", "symbol": "X:Y"}'],
                      kwargs={"route": "state"}, queue="tradebus.state")  # fmt: skip
        app.send_task("tradebus.state.apply", args=[42], queue="tradebus.state")
        d = dispatcher_for(app, settings)
        d.send(good, good.to_json(), d.routing.routes_for(good)[:1])
        wait_for(lambda: get_order(redis_client, keys, "XAUUSD", "ok"), what="the good event after the bad ones")
        dls = wait_for(
            lambda: (x := list_dead_letters(redis_client, keys)) and len(x) == 2 and x, what="2 dead letters"
        )
    assert all(d.reason.startswith("malformed task payload") and d.attempts == 1 for d in dls)
    assert dls[1].event_json == "42" and dls[1].event is None


def test_pickle_message_is_refused(settings, redis_client, worker_app, worker) -> None:
    app = worker_app()
    keys = Keys(settings.key_prefix)
    ev = TradeEvent.create_order_created("XAUUSD", "pickled", "BUY", 1.0, 1.0)
    good = TradeEvent.create_order_created("XAUUSD", "json", "BUY", 1.0, 1.0)
    with worker():
        # a producer that ignores our accept_content and sends pickle
        app.send_task("tradebus.state.apply", args=[ev.to_json()], kwargs={"route": "state"},
                      queue="tradebus.state", serializer="pickle")  # fmt: skip
        d = dispatcher_for(app, settings)
        d.send(good, good.to_json(), d.routing.routes_for(good)[:1])
        wait_for(lambda: get_order(redis_client, keys, "XAUUSD", "json"), what="the JSON task")
    assert get_order(redis_client, keys, "XAUUSD", "pickled") is None
    assert redis_client.hget(keys.stats(), "run:tradebus.state.apply") == "1"
    assert app.conf.accept_content == ["json"] and json.dumps(app.conf.task_serializer) == '"json"'


def test_a_task_whose_statistics_cannot_be_counted_still_succeeds_once(
    settings, redis_client, worker_app, worker
) -> None:
    # Given the stats hash unwritable (WRONGTYPE: what a Redis outage after the task's work looks like to
    # the statistics write, minus the outage)
    from celery.signals import task_failure, task_retry, task_success

    redis_client.set(Keys(settings.key_prefix).stats(), "not a hash")
    app = worker_app(RoutingTable([Route("rec", "tradebus_test.record", "tradebus.state", ("order.*",))]))
    outcomes: list[str] = []
    receivers = {"success": task_success, "retry": task_retry, "failure": task_failure}
    handlers = {name: (lambda name=name, **_: outcomes.append(name)) for name in receivers}
    for name, signal in receivers.items():
        signal.connect(handlers[name], weak=False)
    try:
        with _bus(settings, app) as bus, worker():
            bus.publish(TradeEvent.create_order_created("XAUUSD", "s1", "BUY", 2000.0, 1.0))
            wait_for(lambda: outcomes, what="the task's outcome")
    finally:
        for name, signal in receivers.items():
            signal.disconnect(handlers[name])
    # Then the task ran its effect once and succeeded: statistics are not worth a retry of the effect
    assert outcomes == ["success"]
    assert redis_client.lrange(_k(settings, "ran"), 0, -1) == ["rec|order.created|XAUUSD"]
