"""TRADEBUS_PUBLISH_REPLICAS on the asyncio bus: the WAIT step is shared with the blocking bus, so an
awaited publish confirms only once the replica has the events, and raises NotReplicatedError when it
is cut off (the events are logged on the master either way)."""

from __future__ import annotations

import pytest

from bus import TradeEvent
from bus.aio import AsyncRedisEventBus
from bus.config import Settings
from bus.core.durability import NotReplicatedError
from tests.aio.test_aio import run
from tests.topology_servers import SentinelSet

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def trade(i: int) -> TradeEvent:
    return TradeEvent.create_trade_executed(symbol="AIOWAIT", trade_id=f"t{i}", side="BUY", price=100.0,
                                            volume=1.0, seq=i)  # fmt: skip


def test_an_awaited_publish_waits_for_the_replica(sentinels: SentinelSet, key_prefix: str) -> None:
    master, replica = sentinels.master(), sentinels.replica()
    events = [trade(i) for i in range(6)]
    settings = Settings(redis_url=master.url, dispatch=False, publish_replicas=1, publish_replicas_timeout_ms=100)

    async def main() -> None:
        async with AsyncRedisEventBus(master.url, settings=settings, key_prefix=key_prefix) as bus:
            await bus.publish(events[0])
            await bus.publish_many(events[1:3])
            sentinels.pause(replica)
            master.client().client_kill_filter(_type="replica")  # nothing written from now on reaches it
            with pytest.raises(NotReplicatedError) as one:
                await bus.publish(events[3])
            with pytest.raises(NotReplicatedError) as many:
                await bus.publish_many(events[4:])
            assert (one.value.replicas, len(one.value.log_ids)) == (0, 1)
            assert (many.value.replicas, len(many.value.log_ids)) == (0, 2)
            logged = [e.event_id for _, e in await bus.read_log("AIOWAIT")]
            assert logged == [e.event_id for e in events]
            sentinels.resume(replica)

    run(main())
