"""The figures a worker and an executor add: drain batch size and seconds, publish-to-done latency per
route (Prometheus and the stats hash `tradebus top` reads), log-route lag and pending per route from
XINFO GROUPS (never a label per symbol), and an executor's outbox depth and flushes across a Redis outage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from bus.core.bus import RedisEventBus
from bus.dispatch.dispatcher import Dispatcher
from bus.dispatch.logroutes.config import LogRouteConfig
from bus.dispatch.logroutes.drain import DONE, Drainer
from bus.dispatch.logroutes.effects import effect_for
from bus.dispatch.routing import LOG, Route, RoutingTable
from bus.embedded import EmbeddedRedis
from bus.events.model import TradeEvent
from bus.executor.outbox import Outbox, OutboxPublisher
from bus.monitor.gauges import RedisGauges
from bus.monitor.routes import RouteReader
from bus.monitor.snapshot import route_done_field, route_latency_field
from bus.observability import metrics
from tests.logroute_effects import applied  # registers the tradebus_test.log_* effects

pytestmark = pytest.mark.redis

RECORD = Route("rec", "tradebus_test.log_record", "tradebus.state", ("order.*",), mode=LOG)
CONFIG = LogRouteConfig(batch=4, claim_after=0.4, time_budget=5.0)


@pytest.fixture
def recorder() -> Iterator[metrics.Recorder]:
    yield metrics.enable_metrics()
    metrics.disable_metrics()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def order(i: int, symbol: str) -> TradeEvent:
    return TradeEvent.create_order_created(symbol, f"o{i}", "BUY", 2000.0 + i, 1.0)


def test_drain_batches_and_route_latency_are_recorded(recorder, settings, broker_url) -> None:
    dispatcher = Dispatcher(broker_url, RoutingTable([RECORD]), settings=settings, log_routes=CONFIG)
    before = {n: sample(n, route="rec") for n in ("tradebus_drain_batch_size_count", "tradebus_drain_batch_size_sum",
                                                  "tradebus_route_latency_seconds_count")}  # fmt: skip
    with RedisEventBus(settings.bus_url, key_prefix=settings.key_prefix, dispatcher=dispatcher) as bus:
        for i in range(6):
            bus.publish(order(i, "RMET"))
        bus.publish(TradeEvent.create_trade_failed("RMET", "not the route's"))  # acknowledged, not applied
        out = Drainer(bus.client, bus.keys, RECORD, "RMET", effect_for(RECORD), config=CONFIG, publisher=bus).run()
        assert out.status == DONE and len(applied(bus.client, bus.keys, "rec", "RMET")) == 6
    assert (out.acked, out.applied) == (7, 6) and out.latency_ms >= 0
    assert sample("tradebus_drain_batch_size_count", route="rec") - before["tradebus_drain_batch_size_count"] == 2
    assert sample("tradebus_drain_batch_size_sum", route="rec") - before["tradebus_drain_batch_size_sum"] == 6
    assert sample("tradebus_route_latency_seconds_count", route="rec") - before[
        "tradebus_route_latency_seconds_count"] == 6  # fmt: skip
    assert sample("tradebus_drain_batch_seconds_count", route="rec") >= 2


def test_log_route_lag_and_pending_per_route_summed_over_symbols(settings, broker_url) -> None:
    dispatcher = Dispatcher(broker_url, RoutingTable([RECORD]), settings=settings, log_routes=CONFIG)
    with RedisEventBus(settings.bus_url, key_prefix=settings.key_prefix, dispatcher=dispatcher) as bus:
        for symbol, n in (("RLAGA", 3), ("RLAGB", 5)):
            for i in range(n):
                bus.publish(order(i, symbol))
        registry = CollectorRegistry()
        registry.register(RedisGauges(bus.client, bus.keys, RoutingTable([RECORD])))
        assert registry.get_sample_value("tradebus_logroute_lag", {"route": "rec"}) == 8
        assert registry.get_sample_value("tradebus_logroute_pending", {"route": "rec"}) == 0
        assert registry.get_sample_value("tradebus_logroute_oldest_waiting_seconds", {"route": "rec"}) >= 0
        labels = {tuple(sorted(s.labels)) for f in registry.collect() for s in f.samples}
        assert labels <= {(), ("route",)}  # never a label per symbol
        Drainer(bus.client, bus.keys, RECORD, "RLAGB", effect_for(RECORD), config=CONFIG, publisher=bus).run()
        assert registry.get_sample_value("tradebus_logroute_lag", {"route": "rec"}) == 3


def test_route_reader_rates_and_means_over_the_interval(redis_client, key_prefix, settings) -> None:
    # Given the workers' stats for a route: 10 events done, 100 ms each; then 10 more at 300 ms each
    from bus.core.keys import Keys

    keys = Keys(key_prefix)
    stats = keys.stats()
    redis_client.hset(stats, mapping={route_done_field("notify"): 10, route_latency_field("notify"): 1000})
    reader = RouteReader(redis_client, keys, RoutingTable.default())
    (first,) = [r for r in reader.poll() if r.route == "notify"]
    assert (first.done, first.latency_ms, first.lag) == (10, 100.0, None)  # an event route has no lag
    redis_client.hincrby(stats, route_done_field("notify"), 10)
    redis_client.hincrby(stats, route_latency_field("notify"), 3000)
    figures = {r.route: r for r in reader.poll()}
    assert figures["notify"].done == 20 and figures["notify"].latency_ms == pytest.approx(300.0)
    assert figures["notify"].per_second > 0
    assert figures["state"].latency_ms is None and figures["state"].lag == 0  # a log route: lag, nothing done


@pytest.mark.faults
def test_outbox_depth_and_flushes_across_an_outage(recorder, tmp_path: Path, key_prefix: str) -> None:
    with EmbeddedRedis() as server:
        bus = RedisEventBus(server.url, key_prefix=key_prefix)
        pub = OutboxPublisher(bus, Outbox(tmp_path / "ob.db"), retry_interval=0)
        before = sample("tradebus_outbox_flushes_total"), sample("tradebus_outbox_flushed_events_total")
        depth = sample("tradebus_outbox_depth")
        server.stop()
        for i in range(3):
            assert pub.publish(order(i, "ROUT")) is None  # queued
        assert sample("tradebus_outbox_depth") - depth == 3
        server.start()
        assert pub.flush() == 3
        assert sample("tradebus_outbox_depth") == depth
        assert sample("tradebus_outbox_flushes_total") - before[0] == 1
        assert sample("tradebus_outbox_flushed_events_total") - before[1] == 3
        pub.close()
        bus.close()
        assert sample("tradebus_outbox_depth") == depth  # a closed outbox reports nothing, the scrape still answers


def test_the_publish_tally_scrapes_as_prometheus_clients_own_metrics() -> None:
    """One process keeps the publish figures as ints (bus/observability/tally.py); a scrape must read
    exactly what prometheus-client's Counter and Histogram would (a prefork worker uses those)."""
    from prometheus_client import generate_latest

    seconds = [0.0001, 0.0002, 0.0004, 0.003, 0.7, 2.0, 0.0002]
    published = [["order.created"], ["trade.failed", "order.created"], [], ["x"], ["x"], ["x"], ["x"]]
    routes = [("state", "risk"), (), ("notify",), (), (), ("state",), ()]
    texts = []
    for multiprocess in (False, True):
        registry = CollectorRegistry()
        recorder = metrics.Recorder(registry, multiprocess=multiprocess)
        for s, types, rs in zip(seconds, published, routes, strict=True):
            recorder.record_publish(types, s, rs, rs[:1])
        lines = generate_latest(registry).decode().splitlines()
        texts.append(sorted(line for line in lines if line.startswith(("tradebus_events_published", "tradebus_routes",
                                                                        "tradebus_publish_seconds"))
                            and "_created" not in line))  # fmt: skip
    assert texts[0] == texts[1] and len(texts[0]) > 15
