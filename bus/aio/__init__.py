"""tradebus for asyncio: ``AsyncRedisEventBus`` publishes, subscribes (``async for``) and queries with
the blocking bus's guarantees, running the same code (see bus/aio/bus.py).

    from bus.aio import AsyncRedisEventBus

    async with AsyncRedisEventBus("redis://localhost:6379/0") as bus:
        receipt = await bus.publish(event)
        async for event in bus.events(symbol="XAUUSD"):
            ...

``AsyncTradeExecutor`` (bus.aio.executor) awaits the executor's calls, outbox included.
"""

from __future__ import annotations

from bus.aio.bus import AsyncRedisEventBus
from bus.aio.factory import AsyncEventBusFactory
from bus.aio.stream import EventStream
from bus.core.publisher import PublishReceipt

__all__ = ["AsyncEventBusFactory", "AsyncRedisEventBus", "EventStream", "PublishReceipt"]
