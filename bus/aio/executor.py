"""The executor for asyncio code: the same TradeExecutor (orders, outbox, kill switch), awaited.

The executor's publish path is blocking by nature: a venue SDK call, an fsync'd sqlite append to the
outbox while Redis is down, a flush that replays it. ``AsyncTradeExecutor`` runs each call on one
worker thread of its own, in the order the calls were made, so the event loop never waits on any of
that and the events keep the order the outbox guarantees (one publisher path at a time). The
executor publishes through its blocking ``RedisEventBus`` exactly as it does without asyncio (durable
publish, the exactly-once outbox, ``RedisEventBus(connect=False)`` to start during an outage); nothing
is re-implemented here.

    executor = await AsyncTradeExecutor.build_from_config(config, client=venue, event_bus=RedisEventBus(...))
    ticket = await executor.buy("XAUUSD", 0.1)
    await executor.aclose()
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from bus.aio.bus import AsyncRedisEventBus
from bus.events.model import TradeEvent
from bus.executor.builder import ExecutorBuilder, ExecutorConfig, TradeExecutor
from bus.executor.orders import OrderTicket
from bus.executor.venue import Number, TradingVenue

T = TypeVar("T")


class AsyncTradeExecutor:
    """A TradeExecutor whose calls are awaited (see the module docstring)."""

    def __init__(self, executor: TradeExecutor, *, thread: ThreadPoolExecutor | None = None) -> None:
        self.executor = executor
        self._thread = thread or ThreadPoolExecutor(max_workers=1, thread_name_prefix="tradebus-executor")

    @classmethod
    async def build_from_config(
        cls,
        config: ExecutorConfig | Mapping[str, Any] | None = None,
        client: TradingVenue | None = None,
        event_bus: Any = None,
        **kw: Any,
    ) -> AsyncTradeExecutor:
        """``ExecutorBuilder.build_from_config`` on the worker thread (it may flush an old outbox).

        ``event_bus`` is a blocking bus (a ``RedisEventBus``): the executor publishes from its thread."""
        if isinstance(event_bus, AsyncRedisEventBus):
            raise TypeError(
                "the executor publishes from its own thread: give it a RedisEventBus (same URL and "
                "settings), not the AsyncRedisEventBus"
            )
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tradebus-executor")
        build = functools.partial(ExecutorBuilder.build_from_config, config, client, event_bus, **kw)
        return cls(await asyncio.get_running_loop().run_in_executor(thread, build), thread=thread)

    async def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """``fn(*args, **kw)`` on the executor's thread, after every call made before it."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(fn, *args, **kw))

    # orders and positions
    async def place_order(self, symbol: str, side: str, volume: Number, **kw: Any) -> OrderTicket:
        return await self.call(self.executor.place_order, symbol, side, volume, **kw)

    async def buy(self, symbol: str, volume: Number, **kw: Any) -> OrderTicket:
        return await self.call(self.executor.buy, symbol, volume, **kw)

    async def sell(self, symbol: str, volume: Number, **kw: Any) -> OrderTicket:
        return await self.call(self.executor.sell, symbol, volume, **kw)

    async def cancel_order(self, order_id: str, reason: str | None = None) -> None:
        await self.call(self.executor.cancel_order, order_id, reason)

    async def close_position(self, position_id: str, volume: Number | None = None) -> None:
        await self.call(self.executor.close_position, position_id, volume)

    # publishing
    async def publish(self, event: TradeEvent) -> TradeEvent:
        """Publish any event through the executor's outbox path (never raises on a bus failure)."""
        return await self.call(self.executor.publish, event)

    async def report_risk_breach(self, symbol: str, rule: str, limit: float, value: float, **extra: Any) -> TradeEvent:
        return await self.call(self.executor.report_risk_breach, symbol, rule, limit, value, **extra)

    async def flush(self) -> int:
        """Send what waits in the outbox, in order; how many went out (stops at a bus failure)."""
        return await self.call(self.executor.flush)

    @property
    def pending_events(self) -> int:
        """Events waiting in the outbox for the bus."""
        return self.executor.pending_events

    async def aclose(self) -> None:
        """Close the executor after the calls already made (what is queued in the outbox stays on disk)."""
        try:
            await self.call(self.executor.close)
        finally:
            self._thread.shutdown(wait=False)

    async def __aenter__(self) -> AsyncTradeExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
