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
from bus.observability import tracing  # noqa: E402
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


@pytest.mark.parametrize("tradebus_spans", [False, True], ids=["celery-only", "with-tradebus-spans"])
def test_one_trace_from_publish_to_each_task(settings, worker_app, worker, traced, tradebus_spans) -> None:
    provider, exporter = traced
    if tradebus_spans:  # tradebus's own publish / task spans (bus.observability.tracing) on the same provider
        tracing.set_tracer_provider(provider)
    table = RoutingTable([Route("fills", "tradebus_test.record", "tradebus.state", ("order.*",)),
                          Route("alerts", "tradebus_test.record", "tradebus.risk", ("order.*",))])  # fmt: skip
    app = worker_app(table)
    tracer = provider.get_tracer("trading-app")
    consumers = 4 if tradebus_spans else 2  # Celery's run span, and tradebus's task span when on
    try:
        with RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus, worker():
            with tracer.start_as_current_span("on_fill") as parent:  # the application's own span
                ev = TradeEvent.create_order_filled("XAUUSD", "o1", 2000.0, 1.0)
                assert bus.publish(ev).dispatched == ("fills", "alerts")
            wait_for(lambda: len([s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER])
                     == consumers, what="the task spans")  # fmt: skip
    finally:
        tracing.set_tracer_provider(None)
    finished = exporter.get_finished_spans()
    trace_id = parent.get_span_context().trace_id
    assert {s.context.trace_id for s in finished} == {trace_id}  # every span, tradebus's too, in one trace
    # the publish messages' parent: tradebus's publish span when on, else the application's span
    publish = [s for s in finished if s.name == "publish order.filled"]
    expected_parent = publish[0].context.span_id if tradebus_spans else parent.get_span_context().span_id
    assert len(publish) == (1 if tradebus_spans else 0)
    for route in ("fills", "alerts"):
        task_id = f"{ev.event_id}:{route}"
        # apply_async/<task>: opened by before_task_publish, ended by after_task_publish after the commit
        sent = next(s for s in finished
                    if s.kind == SpanKind.PRODUCER and s.attributes.get("messaging.message.id") == task_id)  # fmt: skip
        # the worker's spans (Celery's run/<task>, and tradebus's task span when on): children of this
        # message's span, taken from the traceparent the message carried
        ran = [s for s in finished
               if s.kind == SpanKind.CONSUMER and s.parent is not None
               and s.parent.span_id == sent.context.span_id]  # fmt: skip
        assert {s.name for s in ran} == {"run/tradebus_test.record"} | ({f"task {route}"} if tradebus_spans else set())
        # each message's span a child of the publish (not nested in the previous message's)
        assert sent.parent is not None and sent.parent.span_id == expected_parent
        assert sent.name == "apply_async/tradebus_test.record"
