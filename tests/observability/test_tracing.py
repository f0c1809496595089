"""OpenTelemetry: a span per publish with the event's attributes, continued by each of its tasks
(the SDK's in-memory exporter collects them)."""

from __future__ import annotations

import pytest
from opentelemetry.trace import SpanKind

from bus.core.bus import RedisEventBus
from bus.dispatch.routing import RetryPolicy, Route, RoutingTable
from bus.events.model import TradeEvent
from bus.observability import tracing
from tests.helpers import dispatcher_for, wait_for

pytestmark = pytest.mark.redis


def test_no_tracer_configured_means_no_tracer() -> None:
    assert tracing.active_tracer() is None and tracing.trace_headers() == {}


def test_publish_span_carries_the_event(spans, redis_url, key_prefix) -> None:
    event = TradeEvent.create_order_created("OBST", "o1", "buy", 1.0, 2.0)
    with RedisEventBus(redis_url, key_prefix=key_prefix) as bus:
        receipt = bus.publish(event)
    (span,) = spans.get_finished_spans()
    assert span.name == "publish order.created" and span.kind is SpanKind.PRODUCER
    assert dict(span.attributes or {}) == {
        "messaging.system": "tradebus",
        "messaging.operation.type": "publish",
        "tradebus.event_type": "order.created",
        "tradebus.symbol": "OBST",
        "tradebus.event_id": event.event_id,
        "tradebus.log_id": receipt.log_id,
    }


@pytest.mark.celery
def test_each_task_continues_the_publish_trace(spans, settings, worker_app, worker) -> None:
    once = RetryPolicy(max_retries=0)
    routes = [
        Route(name, "tradebus_test.record", "tradebus.notify", ("order.*",), retry=once) for name in ("rec", "rec2")
    ]
    app = worker_app(RoutingTable(routes))
    event = TradeEvent.create_order_created("OBSU", "o1", "buy", 1.0, 2.0)
    with RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus, worker():
        assert bus.publish(event).dispatched == ("rec", "rec2")
        wait_for(lambda: len(spans.get_finished_spans()) == 3, timeout=30, what="the publish and two task spans")
    finished = spans.get_finished_spans()
    (publish,) = [s for s in finished if s.kind is SpanKind.PRODUCER]
    tasks = sorted((s for s in finished if s.kind is SpanKind.CONSUMER), key=lambda s: s.name)
    assert [t.name for t in tasks] == ["task rec", "task rec2"]
    for task in tasks:
        assert task.context.trace_id == publish.context.trace_id
        assert task.parent is not None and task.parent.span_id == publish.context.span_id
        assert (task.attributes or {})["tradebus.task"] == "tradebus_test.record"
