"""The notify task on a real in-process Celery worker, against a real local webhook server."""

from __future__ import annotations

import pytest
from support_celery import celery_settings, client, dispatcher_for, test_app, wait_for, worker  # noqa: F401

from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.dispatch.deadletters import list_dead_letters
from bus.dispatch.routing import RetryPolicy, Route, RoutingTable
from bus.domain.notify import NotifyConfig, verify_signature
from bus.events.model import TradeEvent

pytestmark = [pytest.mark.redis, pytest.mark.celery]
SECRET = "worker-test-secret"
BUDGET = RetryPolicy(max_retries=3, backoff=0.01, backoff_max=0.05, jitter=True)


def _app(settings, url):
    table = RoutingTable(
        [Route("notify", "tradebus.notify.send", "tradebus.notify", ("order.rejected", "risk.*"), retry=BUDGET)]
    )
    app = test_app(settings, table)
    app.tradebus.notify_config = NotifyConfig(webhook_urls=(url,), secret=SECRET, log_sink=False)
    return app


def test_webhook_failing_twice_is_delivered(celery_settings, client, webhook_receiver):  # noqa: F811
    keys = Keys(celery_settings.key_prefix)
    event = TradeEvent.create_order_rejected("XAUUSD", "o1", "no margin")
    with webhook_receiver([500, 500]) as rx:
        app = _app(celery_settings, rx.url)
        with (
            RedisEventBus(settings=celery_settings, dispatcher=dispatcher_for(app, celery_settings)) as bus,
            worker(app, queues="tradebus.notify"),
        ):
            assert bus.publish(event).dispatched == ("notify",)
            wait_for(lambda: client.hgetall(keys.notified(event.event_id)), what="delivery recorded")
        assert len(rx.requests) == 3
        last = rx.requests[-1]
        assert verify_signature(
            last.body, SECRET, last.headers["X-Tradebus-Timestamp"], last.headers["X-Tradebus-Signature"]
        )
    assert list(client.hgetall(keys.notified(event.event_id)).values()) == ["ok"]
    assert client.hget(keys.stats(), "retried:tradebus.notify.send") == "2"
    assert list_dead_letters(client, keys) == []


def test_always_failing_webhook_dead_lettered_after_budget(celery_settings, client, webhook_receiver):  # noqa: F811
    keys = Keys(celery_settings.key_prefix)
    event = TradeEvent.create_order_rejected("XAUUSD", "o2", "no margin")
    with webhook_receiver(default=503) as rx:
        app = _app(celery_settings, rx.url)
        d = dispatcher_for(app, celery_settings)
        with worker(app, queues="tradebus.notify"):
            d.send(event, event.to_json(), app.tradebus.routing.routes_for(event))
            (dl,) = wait_for(lambda: list_dead_letters(client, keys), what="a dead letter")
        assert len(rx.requests) == 1 + BUDGET.max_retries
    assert (dl.route, dl.task, dl.attempts) == ("notify", "tradebus.notify.send", 4)
    assert "503" in dl.reason and SECRET not in dl.reason
    assert dl.event.event_id == event.event_id


def test_4xx_dead_lettered_without_retry(celery_settings, client, webhook_receiver):  # noqa: F811
    keys = Keys(celery_settings.key_prefix)
    event = TradeEvent.create_order_rejected("XAUUSD", "o3", "no margin")
    with webhook_receiver(default=410) as rx:
        app = _app(celery_settings, rx.url)
        d = dispatcher_for(app, celery_settings)
        with worker(app, queues="tradebus.notify"):
            d.send(event, event.to_json(), app.tradebus.routing.routes_for(event))
            (dl,) = wait_for(lambda: list_dead_letters(client, keys), what="a dead letter")
        assert len(rx.requests) == 1
    assert dl.attempts == 1 and dl.reason.startswith("not retryable: PermanentNotifyError")
