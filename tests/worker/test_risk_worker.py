"""Risk task on a real worker: a breach is published once even when the event is delivered twice,
and the breach itself is routed on to the notify task (a real webhook receives it once)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.dispatch.routing import RetryPolicy, Route, RoutingTable
from bus.domain.notify import NotifyConfig
from bus.domain.risk import RiskLimits
from bus.events.model import TradeEvent, TradeEventType
from tests.helpers import dispatcher_for, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.celery]
FAST = RetryPolicy(max_retries=3, backoff=0.01, backoff_max=0.05, jitter=True)


def test_breach_raised_once_and_notified(settings, redis_client, worker_app, worker, webhook_receiver):
    keys = Keys(settings.key_prefix)
    table = RoutingTable(
        [
            Route("risk", "tradebus.risk.check", "tradebus.risk", ("order.created",), retry=FAST),
            Route("notify", "tradebus.notify.send", "tradebus.notify", ("risk.*",), retry=FAST),
        ]
    )
    order = TradeEvent.create_order_created("XAUUSD", "o1", "BUY", 2000.0, 5.0, correlation_id="c-9")
    with webhook_receiver() as rx:
        app = worker_app(table)
        app.tradebus.risk_limits = RiskLimits(max_order_volume=Decimal(2))
        app.tradebus.notify_config = NotifyConfig(webhook_urls=(rx.url,), secret="k", log_sink=False)
        with (
            RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus,
            worker(),
        ):
            bus.publish(order)
            bus.dispatcher.send(order, order.to_json(), table.routes_for(order))  # delivered twice
            wait_for(lambda: redis_client.hget(keys.stats(), "run:tradebus.risk.check") == "2", what="2 risk runs")
            wait_for(lambda: rx.requests, what="the breach notification")
            breaches = [e for _, e in bus.read_log("XAUUSD") if e.event_type is TradeEventType.RISK_LIMIT_BREACHED]
            wait_for(lambda: redis_client.hget(keys.stats(), "run:tradebus.notify.send") == "1", what="notify ran")
    assert len(breaches) == 1
    [breach] = breaches
    assert breach.causation_id == order.event_id and breach.correlation_id == "c-9"
    assert (breach.data["rule"], breach.data["value"], breach.data["limit"]) == ("max_order_volume", 5.0, 2.0)
    assert len(rx.requests) == 1 and rx.requests[0].headers["X-Tradebus-Event-Id"] == breach.event_id
