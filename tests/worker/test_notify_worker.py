"""The notify task on a real in-process Celery worker, against a real local webhook server."""

from __future__ import annotations

import pytest

from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.dispatch.deadletters import list_dead_letters
from bus.dispatch.routing import RetryPolicy, Route, RoutingTable
from bus.domain.notify import NotifyConfig, verify_signature
from bus.events.model import TradeEvent
from tests.helpers import dispatcher_for, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.celery]
SECRET = "worker-test-secret"
BUDGET = RetryPolicy(max_retries=3, backoff=0.01, backoff_max=0.05, jitter=True)


def _app(worker_app, url):
    table = RoutingTable(
        [Route("notify", "tradebus.notify.send", "tradebus.notify", ("order.rejected", "risk.*"), retry=BUDGET)]
    )
    app = worker_app(table)
    app.tradebus.notify_config = NotifyConfig(webhook_urls=(url,), secret=SECRET, log_sink=False)
    return app


def test_webhook_failing_twice_is_delivered(settings, redis_client, worker_app, worker, webhook_receiver):
    keys = Keys(settings.key_prefix)
    event = TradeEvent.create_order_rejected("XAUUSD", "o1", "no margin")
    with webhook_receiver([500, 500]) as rx:
        app = _app(worker_app, rx.url)
        with (
            RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus,
            worker(),
        ):
            assert bus.publish(event).dispatched == ("notify",)
            wait_for(lambda: redis_client.hgetall(keys.notified(event.event_id)), what="delivery recorded")
        assert len(rx.requests) == 3
        last = rx.requests[-1]
        assert verify_signature(
            last.body, SECRET, last.headers["X-Tradebus-Timestamp"], last.headers["X-Tradebus-Signature"]
        )
    assert list(redis_client.hgetall(keys.notified(event.event_id)).values()) == ["ok"]
    assert redis_client.hget(keys.stats(), "retried:tradebus.notify.send") == "2"
    assert list_dead_letters(redis_client, keys) == []


def test_always_failing_webhook_dead_lettered_after_budget(
    settings, redis_client, worker_app, worker, webhook_receiver
):
    keys = Keys(settings.key_prefix)
    event = TradeEvent.create_order_rejected("XAUUSD", "o2", "no margin")
    with webhook_receiver(default=503) as rx:
        app = _app(worker_app, rx.url)
        d = dispatcher_for(app, settings)
        with worker():
            d.send(event, event.to_json(), app.tradebus.routing.routes_for(event))
            (dl,) = wait_for(lambda: list_dead_letters(redis_client, keys), what="a dead letter")
        assert len(rx.requests) == 1 + BUDGET.max_retries
    assert (dl.route, dl.task, dl.attempts) == ("notify", "tradebus.notify.send", 4)
    assert "503" in dl.reason and SECRET not in dl.reason
    assert dl.event.event_id == event.event_id


def test_4xx_dead_lettered_without_retry(settings, redis_client, worker_app, worker, webhook_receiver):
    keys = Keys(settings.key_prefix)
    event = TradeEvent.create_order_rejected("XAUUSD", "o3", "no margin")
    with webhook_receiver(default=410) as rx:
        app = _app(worker_app, rx.url)
        d = dispatcher_for(app, settings)
        with worker():
            d.send(event, event.to_json(), app.tradebus.routing.routes_for(event))
            (dl,) = wait_for(lambda: list_dead_letters(redis_client, keys), what="a dead letter")
        assert len(rx.requests) == 1
    assert dl.attempts == 1 and dl.reason.startswith("not retryable: PermanentNotifyError")
