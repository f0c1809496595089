"""OpenTelemetry's Celery instrumentation on the bridge's tasks: one trace from publish() to the task, as
for a task sent with ``send_task`` (the real SDK, an in-memory exporter, the session worker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.instrumentation.celery")

from opentelemetry.instrumentation.celery import CeleryInstrumentor  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402

from bus.core.bus import RedisEventBus  # noqa: E402
from bus.dispatch.routing import Route, RoutingTable  # noqa: E402
from bus.events.model import TradeEvent  # noqa: E402
from tests.helpers import dispatcher_for, wait_for  # noqa: E402

pytestmark = [pytest.mark.redis, pytest.mark.celery]


@pytest.fixture
def traced() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield provider, exporter
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def test_one_trace_from_publish_to_each_task(settings, worker_app, worker, traced) -> None:
    provider, exporter = traced
    table = RoutingTable([Route("fills", "tradebus_test.record", "tradebus.state", ("order.*",)),
                          Route("alerts", "tradebus_test.record", "tradebus.risk", ("order.*",))])  # fmt: skip
    app = worker_app(table)
    tracer = provider.get_tracer("trading-app")
    with RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus, worker():
        with tracer.start_as_current_span("on_fill") as parent:  # the application's own span
            ev = TradeEvent.create_order_filled("XAUUSD", "o1", 2000.0, 1.0)
            assert bus.publish(ev).dispatched == ("fills", "alerts")
        wait_for(lambda: len([s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]) == 2,
                 what="both task spans")  # fmt: skip
    finished = exporter.get_finished_spans()
    trace_id = parent.get_span_context().trace_id
    for route in ("fills", "alerts"):
        task_id = f"{ev.event_id}:{route}"
        # apply_async/<task>: opened by before_task_publish, ended by after_task_publish after the commit
        sent = next(s for s in finished
                    if s.kind == SpanKind.PRODUCER and s.attributes.get("messaging.message.id") == task_id)  # fmt: skip
        # run/<task>: the worker's span, its parent taken from the traceparent the message carried
        ran = next(s for s in finished
                   if s.kind == SpanKind.CONSUMER and s.parent is not None
                   and s.parent.span_id == sent.context.span_id)  # fmt: skip
        assert sent.context.trace_id == ran.context.trace_id == trace_id  # one trace
        # each message's span a child of the application's span (not nested in the previous message's)
        assert sent.parent is not None and sent.parent.span_id == parent.get_span_context().span_id
        assert (sent.name, ran.name) == ("apply_async/tradebus_test.record", "run/tradebus_test.record")
