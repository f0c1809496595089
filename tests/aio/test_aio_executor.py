"""The executor from asyncio code (bus.aio.executor): trades and publishes without blocking the loop,
keeps trading through a Redis outage (the outbox), and keeps the order of events."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bus import RedisEventBus, TradeEvent
from bus.aio import AsyncRedisEventBus
from bus.aio.executor import AsyncTradeExecutor
from bus.embedded import EmbeddedRedis
from bus.executor.paper import PaperVenue

pytestmark = [pytest.mark.redis, pytest.mark.faults]


def test_trading_through_an_outage_from_asyncio(tmp_path: Path, own_redis: EmbeddedRedis, key_prefix: str) -> None:
    config = {"source": "aio", "outbox_path": str(tmp_path / "ob.db"), "outbox_retry_interval": 0.1,
              "outbox_flush_interval": 0, "listen_for_breaches": False}  # fmt: skip

    async def main() -> tuple[list[str], list[str]]:
        bus = RedisEventBus(own_redis.url, key_prefix=key_prefix)
        ticks = 0

        async def ticker() -> None:  # proves the loop stays free while the executor's thread works
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        venue = PaperVenue()
        venue.set_price("XAUUSD", "2000")
        async with await AsyncTradeExecutor.build_from_config(config, venue, bus) as ex:
            clock = asyncio.create_task(ticker())
            ticket = await ex.buy("XAUUSD", 0.1)
            assert ticket.status == "filled"
            # When Redis goes away, orders and their events go on (into the outbox), in call order
            own_redis.stop()
            notes = [TradeEvent.create_signal_generated("XAUUSD", f"s{i}", "LONG", "m") for i in range(20)]
            before = ticks
            await asyncio.gather(*(ex.publish(e) for e in notes), ex.sell("XAUUSD", 0.1))
            assert ex.pending_events >= len(notes) + 1 and ticks > before
            # Then once Redis is back, a flush sends the backlog, oldest first
            own_redis.start()
            async with asyncio.timeout(30):
                while ex.pending_events:
                    await ex.flush()
                    await asyncio.sleep(0.05)
            clock.cancel()
        logged = [e for _, e in bus.read_log("XAUUSD")]
        bus.close()
        return [e.event_id for e in logged if e.event_type.value == "signal.generated"], [n.event_id for n in notes]

    signals, sent = asyncio.run(main())
    assert signals == sent


def test_the_executor_refuses_the_asyncio_bus(tmp_path: Path, redis_url: str, key_prefix: str) -> None:
    async def main() -> None:
        async with AsyncRedisEventBus(redis_url, key_prefix=key_prefix) as bus:
            with pytest.raises(TypeError, match="RedisEventBus"):
                await AsyncTradeExecutor.build_from_config({"outbox_path": str(tmp_path / "ob.db")}, event_bus=bus)

    asyncio.run(main())
