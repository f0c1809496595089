"""The asyncio bus on a 3-master Redis Cluster the test starts (redis+cluster:// URL, redis.asyncio RedisCluster):
publish and publish_many across masters, event streams on the reference channel names (classic pub/sub),
state queries, a subscriber that heals when the node it listens on is killed, and the blocking bus reading
what the asyncio one wrote."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from bus import RedisEventBus, TradeEvent
from bus.aio import AsyncRedisEventBus
from bus.config import Settings
from bus.errors import ConfigError
from tests.topology_servers import ClusterSet

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SYMBOLS = ("XAUUSD", "EURUSD", "BTCUSD", "US500", "GBPJPY")


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterSet]:
    topology = ClusterSet().start()
    yield topology
    topology.close()


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def order(i: int, symbol: str) -> TradeEvent:
    return TradeEvent.create_order_created(symbol, f"o{i}", "BUY", 100.0 + i, 1.0)


async def take(stream: Any, n: int) -> list[TradeEvent]:
    out: list[TradeEvent] = []
    async for event in stream:
        out.append(event)
        if len(out) == n:
            break
    return out


def test_publish_streams_and_state_on_a_cluster(cluster: ClusterSet, key_prefix: str) -> None:
    s = Settings(redis_url=cluster.url, dispatch=False, key_prefix=key_prefix)
    events = [order(i, sym) for i in range(12) for sym in SYMBOLS]

    async def main() -> None:
        async with AsyncRedisEventBus(settings=s, apply_state=True) as bus:
            assert isinstance(bus.client, AsyncRedisCluster) and repr(bus).startswith("AsyncRedisEventBus('cluster")
            masters = {bus.client.get_node_from_key(bus.keys.log(sym)).name for sym in SYMBOLS}
            assert len(masters) == 3
            async with bus.events(symbol="XAUUSD") as xau, bus.events(types="order.created") as everything:
                receipts = [await bus.publish(e) for e in events[:20]] + await bus.publish_many(events[20:])
                assert [r.event_id for r in receipts] == [e.event_id for e in events]
                assert await take(xau, 12) == [e for e in events if e.symbol == "XAUUSD"]
                got = await take(everything, len(events))
                for sym in SYMBOLS:  # in publish order per symbol, whichever master logged it
                    assert [e for e in got if e.symbol == sym] == [e for e in events if e.symbol == sym]
            assert await bus.is_connected()
            for sym in SYMBOLS:
                assert sorted(o["order_id"] for o in await bus.get_open_orders(sym)) == sorted(
                    f"o{i}" for i in range(12)
                )
            assert sorted(await bus.known_symbols()) == sorted(SYMBOLS)

    run(main())
    with RedisEventBus(settings=s) as blocking:  # the same keys, read by the blocking bus
        assert [e.event_id for _, e in blocking.read_log("US500")] == [
            e.event_id for e in events if e.symbol == "US500"
        ]


def test_replicated_publish_is_refused_on_an_asyncio_cluster_bus(cluster: ClusterSet, key_prefix: str) -> None:
    s = Settings(redis_url=cluster.url, dispatch=False, key_prefix=key_prefix, publish_replicas=1)
    with pytest.raises(ConfigError, match="PUBLISH_REPLICAS"):
        AsyncRedisEventBus(settings=s)
    given = AsyncRedisCluster(host="127.0.0.1", port=cluster.servers[0].port)
    with pytest.raises(ConfigError, match="PUBLISH_REPLICAS"):  # a client of the user's own, likewise
        AsyncRedisEventBus(client=given, settings=s)  # type: ignore[arg-type]


def test_a_stream_heals_when_its_node_is_killed(key_prefix: str) -> None:
    """Each new pub/sub connection goes to the next node: killing the one a stream listens on, the stream
    reconnects to another and reads what it missed from the log (self-healing subscribers)."""
    topology = ClusterSet(replicas=1).start()
    s = Settings(redis_url=topology.url, dispatch=False, key_prefix=key_prefix)

    async def main() -> None:
        async with AsyncRedisEventBus(settings=s) as pub, AsyncRedisEventBus(settings=s) as sub:
            before = [order(i, "XAUUSD") for i in range(5)]
            async with sub.events(symbol="XAUUSD") as stream:
                for e in before:
                    await pub.publish(e)
                assert await take(stream, 5) == before
                listened = sub.client.get_default_node()
                assert listened is not None
                topology.kill(listened.port)  # the stream's node; if it served XAUUSD, its replica takes over
                after = [order(i, "XAUUSD") for i in range(5, 10)]
                for e in after:
                    while True:  # the caller retries a publish that failed (its master may be the dead node)
                        try:
                            await pub.publish(e)
                            break
                        except Exception:  # noqa: BLE001 - BusConnectionError or a moved slot, until promoted
                            await asyncio.sleep(0.1)
                assert await take(stream, 5) == after

    try:
        run(main(), timeout=90)
    finally:
        topology.close()
