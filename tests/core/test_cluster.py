"""A bus on a 3-master Redis Cluster it starts itself: publish (log + broadcast + state in the symbol's
slot), publish_many across symbols on different masters, classic pub/sub subscriptions under the
reference channel names, state queries, and dispatch through the pending record to a separate broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from bus import RedisEventBus, TradeEvent
from bus.config import Settings
from bus.core.connection import make_cluster_client
from bus.dispatch.dispatcher import Dispatcher
from bus.dispatch.routing import RoutingTable
from tests.helpers import wait_for
from tests.topology_servers import ClusterSet

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SYMBOLS = ("XAUUSD", "EURUSD", "BTCUSD", "US500", "GBPJPY")


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterSet]:
    topology = ClusterSet().start()
    yield topology
    topology.close()


@pytest.fixture
def settings_on(cluster: ClusterSet, key_prefix: str) -> Settings:
    return Settings(redis_url=cluster.url, dispatch=False, key_prefix=key_prefix)


def order(i: int, symbol: str) -> TradeEvent:
    return TradeEvent.create_order_created(symbol=symbol, order_id=f"o{i}", order_type="BUY", price=100.0 + i,
                                           volume=1.0)  # fmt: skip


def masters_of(client: RedisCluster, bus: RedisEventBus) -> dict[str, str]:
    return {s: client.get_node_from_key(bus.keys.log(s)).name for s in SYMBOLS}


def test_bus_from_a_cluster_url_and_from_a_cluster_client(settings_on: Settings) -> None:
    by_url = RedisEventBus(settings=settings_on)
    by_client = RedisEventBus(client=make_cluster_client(settings_on.bus_url, settings_on), settings=settings_on)
    assert isinstance(by_url.client, RedisCluster) and by_url.is_connected and by_client.is_connected
    assert repr(by_client).startswith("RedisEventBus('cluster 127.0.0.1:")
    assert "cluster 127.0.0.1:" in by_url.where
    by_url.close()
    by_client.close()


def test_publish_many_across_masters_keeps_each_symbols_order_and_subscribers_get_it(
    settings_on: Settings,
) -> None:
    pub = RedisEventBus(settings=settings_on)
    assert len(set(masters_of(pub.client, pub).values())) == 3  # type: ignore[arg-type]
    sub = RedisEventBus(settings=settings_on)
    seen: dict[str, list[str]] = {s: [] for s in SYMBOLS}
    for s in SYMBOLS:  # the reference's channel names, classic pub/sub: any node hears every PUBLISH
        sub.subscribe_all(s, lambda e: seen[e.symbol].append(e.event_id))
    handle = sub.listen_in_thread()
    assert handle.wait_ready(10)

    events = [order(i, s) for i in range(40) for s in SYMBOLS]  # interleaved: one pipeline, three masters
    receipts = pub.publish_many(events[:100]) + [pub.publish(e) for e in events[100:]]
    assert [r.event_id for r in receipts] == [e.event_id for e in events]
    for s in SYMBOLS:
        expected = [e.event_id for e in events if e.symbol == s]
        assert [e.event_id for _, e in pub.read_log(s)] == expected
        wait_for(lambda s=s, expected=expected: seen[s] == expected, 10, f"{s} delivered in order")
    assert sorted(pub.known_symbols()) == sorted(SYMBOLS)
    sub.close()
    pub.close()


def test_state_projection_and_queries_on_a_cluster(cluster: ClusterSet, key_prefix: str) -> None:
    s = Settings(redis_url=cluster.url, dispatch=False, key_prefix=key_prefix)
    bus = RedisEventBus(settings=s, apply_state=True)
    for symbol in SYMBOLS:
        bus.publish(order(1, symbol))
    bus.publish_many([order(2, symbol) for symbol in SYMBOLS])
    bus.publish(TradeEvent.create_order_filled(symbol="EURUSD", order_id="o1", fill_price=101.0, volume=1.0))
    for symbol in SYMBOLS:
        open_ids = sorted(o["order_id"] for o in bus.get_open_orders(symbol))
        assert open_ids == (["o2"] if symbol == "EURUSD" else ["o1", "o2"])
    filled = bus.get_order("EURUSD", "o1")
    assert filled is not None and filled["status"] == "filled" and bus.get_order("XAUUSD", "o2") is not None
    bus.close()


def test_dispatch_takes_the_pending_record_path_to_a_separate_broker(
    cluster: ClusterSet, key_prefix: str, broker_url: str
) -> None:
    s = Settings(redis_url=cluster.url, celery_broker_url=broker_url, key_prefix=key_prefix,
                 broker_key_prefix=f"{key_prefix}:")  # fmt: skip
    dispatcher = Dispatcher.from_settings(s, RoutingTable.default())
    bus = RedisEventBus(settings=s, dispatcher=dispatcher)
    assert dispatcher.stages_in_bus_pipeline is False  # a Cluster refuses the SELECT of a staged MULTI
    fill = TradeEvent.create_order_filled(symbol="XAUUSD", order_id="o1", fill_price=101.0, volume=1.0)
    receipts = [bus.publish(fill)] + bus.publish_many([order(i, sym) for i, sym in enumerate(SYMBOLS)])
    assert receipts[0].dispatched and not receipts[0].not_dispatched
    broker = redis.Redis.from_url(broker_url)
    queued = sum(broker.llen(key) for key in broker.scan_iter(f"{key_prefix}:*", _type="list"))
    assert queued >= len(receipts[0].dispatched)
    # every pending record was cleared once the broker took the tasks (beat would re-send the rest)
    assert all(bus.client.zcard(bus.keys.pending_dispatch_for(sym)) == 0 for sym in SYMBOLS)
    assert dispatcher.redispatch_missed(grace_seconds=0) == 0
    broker.close()
    bus.close()
