"""In-process metrics: publish() counts events by type and the routes it dispatched; subscriber counters
appear on scrape; and with metrics off nothing of prometheus-client is even imported."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from bus.core.bus import RedisEventBus
from bus.core.sequenced import SequencedPublisher
from bus.dispatch.dispatcher import Dispatcher
from bus.dispatch.routing import RoutingTable
from bus.events.model import TradeEvent
from bus.observability import metrics
from tests.helpers import wait_for

pytestmark = pytest.mark.redis


@pytest.fixture
def recorder() -> Iterator[metrics.Recorder]:
    yield metrics.enable_metrics()
    metrics.disable_metrics()  # the rest of the suite publishes with metrics off, as by default


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_publish_counts_events_by_type_and_routes_dispatched(recorder, settings) -> None:
    # the broker queues are under the test's prefix: no worker takes these tasks
    dispatcher = Dispatcher(settings.broker_url, RoutingTable.default(), settings=settings)
    before = {
        "created": sample("tradebus_events_published_total", event_type="order.created"),
        "failed": sample("tradebus_events_published_total", event_type="trade.failed"),
        "state": sample("tradebus_routes_dispatched_total", route="state"),
        "publishes": sample("tradebus_publish_seconds_count"),
    }
    with RedisEventBus(settings=settings, dispatcher=dispatcher) as bus:
        receipts = [bus.publish(TradeEvent.create_order_created("OBSM", "o1", "buy", 1.0, 2.0))]
        receipts += bus.publish_many([TradeEvent.create_trade_failed("OBSM", f"x{i}") for i in range(3)])
    state_routes = sum(r.dispatched.count("state") for r in receipts)
    assert state_routes >= 1
    assert sample("tradebus_events_published_total", event_type="order.created") - before["created"] == 1
    assert sample("tradebus_events_published_total", event_type="trade.failed") - before["failed"] == 3
    assert sample("tradebus_routes_dispatched_total", route="state") - before["state"] == state_routes
    assert sample("tradebus_publish_seconds_count") - before["publishes"] == 2  # one publish, one batch


def test_subscriber_counters_are_read_on_scrape(recorder, redis_url, key_prefix) -> None:
    before = sample("tradebus_subscriber_delivered_total")
    seen: list[TradeEvent] = []
    with RedisEventBus(redis_url, key_prefix=key_prefix) as bus, RedisEventBus(redis_url, key_prefix=key_prefix) as pub:
        bus.subscribe_all("OBSS", seen.append)
        handle = bus.listen_in_thread()
        assert handle.wait_ready(10)
        pub.publish(TradeEvent.create_trade_failed("OBSS", "x"))
        wait_for(lambda: seen, what="the delivery")
        assert sample("tradebus_subscriber_delivered_total") - before == 1
        handle.stop()
        handle.join(5)


def test_import_bus_imports_no_observability_library() -> None:
    # not opentelemetry: redis-py's own observability module imports it when it is installed
    libraries = ("prometheus_client", "pythonjsonlogger")
    code = (
        f"import sys, bus, bus.core.bus, bus.dispatch.dispatcher; print([m for m in {libraries!r} if m in sys.modules])"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_sequenced_publish_counts_an_event_once_however_often_it_is_sent(recorder, redis_url, key_prefix) -> None:
    before = sample("tradebus_events_published_total", event_type="trade.failed")
    events = [(i, TradeEvent.create_trade_failed("OBSQ", f"x{i}")) for i in (1, 2)]
    with RedisEventBus(redis_url, key_prefix=key_prefix) as bus:
        sequenced = SequencedPublisher(bus.publisher, "obs-test", "origin-1")
        assert not any(r.already_logged for r in sequenced.publish(events))
        assert all(r.already_logged for r in sequenced.publish(events))  # an outbox re-sending after a lost reply
    assert sample("tradebus_events_published_total", event_type="trade.failed") - before == 2
