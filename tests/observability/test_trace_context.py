"""The trace context rides with the event: the log entry and the broadcast carry the publish span's
``traceparent`` (nothing at all when no tracer is configured), subscribers hand out plain TradeEvents whose
context ``tracing.context_of`` gives, each delivery is a child span of the publish, and each log-route drain
batch is a span linked to the publishes of its entries. Real Redis; the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson
import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from bus.aio.bus import AsyncRedisEventBus
from bus.core.bus import RedisEventBus
from bus.core.sequenced import SequencedPublisher
from bus.core.wire import decode_broadcast, decode_entry
from bus.dispatch.dispatcher import Dispatcher
from bus.dispatch.logroutes.config import LogRouteConfig
from bus.dispatch.logroutes.drain import DONE, Drainer
from bus.dispatch.logroutes.effects import effect_for
from bus.dispatch.routing import LOG, Route, RoutingTable
from bus.events.model import TradeEvent
from bus.observability import tracing
from tests.helpers import wait_for
from tests.logroute_effects import applied  # registers the tradebus_test.log_* effects

pytestmark = pytest.mark.redis

RECORD = Route("rec", "tradebus_test.log_record", "tradebus.state", ("order.*",), mode=LOG)


def order(i: int, symbol: str) -> TradeEvent:
    return TradeEvent.create_order_created(symbol, f"o{i}", "BUY", 2000.0 + i, 1.0)


def traceparent(span: Any) -> str:
    c = span.context
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"


def published(exporter: InMemorySpanExporter) -> dict[str, Any]:
    """event id -> the publish span that logged it."""
    return {s.attributes["tradebus.event_id"]: s for s in exporter.get_finished_spans()
            if s.kind is SpanKind.PRODUCER and not s.attributes.get("tradebus.already_logged")}  # fmt: skip


def first_broadcast(client: redis.Redis, channel: str, publish: Any) -> bytes:
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    publish()
    message = pubsub.get_message(timeout=5)
    pubsub.close()
    assert message is not None
    return bytes(message["data"])


def test_without_a_tracer_entry_and_broadcast_are_exactly_as_before(redis_url, key_prefix) -> None:
    event = order(1, "TRCA")
    with RedisEventBus(redis_url, key_prefix=key_prefix) as bus:
        raw = first_broadcast(bus.client, "trades:TRCA:order.created", lambda: bus.publish(event))
        ((log_id, fields),) = bus.client.xrange(bus.keys.log("TRCA"))
    assert fields == {b"type": b"order.created", b"event": event.encode(), b"n": b"1"}
    prefix = b'{"log_id":"%s","n":1,"prev":"","prev_t":"","bus":"%s",' % (log_id, key_prefix.encode())
    assert raw == prefix + event.encode()[1:]  # byte for byte: nothing added
    assert tracing.context_of(decode_broadcast(raw)[0]) is None


def test_entry_and_broadcast_carry_the_publish_span(spans, redis_url, key_prefix) -> None:
    event = order(1, "TRCB")
    with RedisEventBus(redis_url, key_prefix=key_prefix) as bus:
        raw = first_broadcast(bus.client, "trades:TRCB:order.created", lambda: bus.publish(event))
        ((_, fields),) = bus.client.xrange(bus.keys.log("TRCB"))
    tp = traceparent(published(spans)[event.event_id])
    assert fields[b"tp"] == tp.encode() and fields[b"event"] == event.encode() and fields[b"n"] == b"1"
    assert orjson.loads(raw)["tp"] == tp
    received, meta = decode_broadcast(raw)
    assert type(received) is TradeEvent and received == event  # a plain event: the context is beside it
    from_log = decode_entry(fields)
    for ev in (received, from_log):
        ctx = tracing.context_of(ev)
        assert ctx is not None
        from opentelemetry.trace import get_current_span

        assert get_current_span(ctx).get_span_context().span_id == int(tp.split("-")[2], 16)


def test_a_hostile_traceparent_is_ignored(redis_url, key_prefix) -> None:
    event = order(1, "TRCH")
    for bad in ("", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "00-zz", 12, b"\xff" * 55):
        tracing.carry(event, bad)
        assert tracing.context_of(event) is None


def test_each_subscriber_delivery_is_a_child_of_the_publish(spans, redis_url, key_prefix) -> None:
    events = [order(i, "TRCC") for i in range(3)]
    got: list[TradeEvent] = []
    contexts: list[Any] = []
    with RedisEventBus(redis_url, key_prefix=key_prefix) as sub, RedisEventBus(redis_url, key_prefix=key_prefix) as pub:
        sub.subscribe("TRCC", "order.created", lambda e: (got.append(e), contexts.append(tracing.context_of(e))))
        handle = sub.listen_in_thread()
        assert handle.wait_ready(10)
        for e in events:
            pub.publish(e)
        wait_for(lambda: len(got) == 3, timeout=10, what="three deliveries")
        sub.stop()
        handle.join(10)
    assert got == events and all(type(e) is TradeEvent for e in got) and None not in contexts
    publishes = published(spans)
    deliveries = [s for s in spans.get_finished_spans() if s.name == "deliver order.created"]
    assert len(deliveries) == 3
    for d in deliveries:
        parent = publishes[d.attributes["tradebus.event_id"]]
        assert d.kind is SpanKind.CONSUMER and d.context.trace_id == parent.context.trace_id
        assert d.parent is not None and d.parent.span_id == parent.context.span_id


def test_asyncio_subscriber_delivery_is_a_child_of_the_publish(spans, redis_url, key_prefix) -> None:
    event = order(1, "TRCD")

    async def main() -> list[Any]:
        seen: list[Any] = []
        done = asyncio.Event()

        async def handler(e: TradeEvent) -> None:
            from opentelemetry.trace import get_current_span

            await asyncio.sleep(0)  # the span stays current across an await
            seen.append((e, get_current_span().get_span_context()))
            done.set()

        async with AsyncRedisEventBus(redis_url, key_prefix=key_prefix) as bus:
            bus.subscribe("TRCD", "order.created", handler)
            listener = asyncio.create_task(bus.listen())
            assert await bus.wait_until_listening(10)
            await bus.publish(event)
            await asyncio.wait_for(done.wait(), 10)
            listener.cancel()
        return seen

    ((received, current),) = asyncio.run(main())
    publish = published(spans)[event.event_id]
    (delivery,) = [s for s in spans.get_finished_spans() if s.name == "deliver order.created"]
    assert received == event and current.span_id == delivery.context.span_id
    assert delivery.parent is not None and delivery.parent.span_id == publish.context.span_id


def test_outbox_sequenced_publish_carries_each_events_span(spans, redis_url, key_prefix) -> None:
    events = [order(i, "TRCE") for i in range(3)]
    with RedisEventBus(redis_url, key_prefix=key_prefix) as bus:
        seq = SequencedPublisher(bus.publisher, "executor", "origin-1")
        seq.publish([(1, events[0])])  # the executor's publish: one event
        seq.publish([(2, events[1]), (3, events[2])])  # an outbox flush
        seq.publish([(3, events[2])])  # a resend: skipped, logged once
        entries = bus.client.xrange(bus.keys.log("TRCE"))
    publishes = published(spans)
    assert [f[b"event"] for _, f in entries] == [e.encode() for e in events]
    assert [f[b"tp"].decode() for _, f in entries] == [traceparent(publishes[e.event_id]) for e in events]


def test_each_drain_batch_is_a_span_linked_to_its_entries_publishes(spans, settings, broker_url) -> None:
    table = RoutingTable([RECORD])
    config = LogRouteConfig(batch=4, claim_after=0.4, time_budget=5.0)
    dispatcher = Dispatcher(broker_url, table, settings=settings, log_routes=config)
    events = [order(i, "TRCF") for i in range(6)]
    with RedisEventBus(settings.bus_url, key_prefix=settings.key_prefix, dispatcher=dispatcher) as bus:
        tracing.set_tracer_provider(None)  # the first event untraced: its entry carries no context
        bus.publish(events[0])
        tracing.set_tracer_provider(spans_provider(spans))
        for e in events[1:]:
            bus.publish(e)
        drainer = Drainer(bus.client, bus.keys, RECORD, "TRCF", effect_for(RECORD), config=config, publisher=bus)
        assert drainer.run().status == DONE
        assert applied(bus.client, bus.keys, "rec", "TRCF") == [e.event_id for e in events]
    publishes = published(spans)
    batches = [s for s in spans.get_finished_spans() if s.name == "drain rec"]
    assert [s.attributes["messaging.batch.message_count"] for s in batches] == [4, 2]
    linked = [link.context.span_id for b in batches for link in b.links]
    assert linked == [publishes[e.event_id].context.span_id for e in events[1:]]


_PROVIDERS: dict[int, TracerProvider] = {}


def spans_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = _PROVIDERS.get(id(exporter))
    if provider is None:
        provider = _PROVIDERS[id(exporter)] = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_carried_contexts_leave_with_their_events() -> None:
    before = len(tracing._CARRIED)
    tp = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    for i in range(50):
        tracing.carry(order(i, "TRCG"), tp)  # each event dies at once
    assert len(tracing._CARRIED) == before
    kept = [order(i, "TRCG") for i in range(tracing.CARRIED_MAX + 10)]
    lock = threading.Lock()
    with lock:
        for e in kept:
            tracing.carry(e, tp)
    assert len(tracing._CARRIED) <= tracing.CARRIED_MAX  # bounded while readers keep every event
    assert tracing.context_of(kept[-1]) is not None
