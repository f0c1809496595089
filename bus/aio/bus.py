"""AsyncRedisEventBus: the bus for asyncio code, on redis.asyncio, with the blocking bus's guarantees.

It runs the blocking bus's own code: the publish path (bus/core/publisher.py), the healing decisions
(bus/core/healing.py), the catch-up, log and state reads are steps (bus/core/steps.py) that
bus.aio.steps awaits on a redis.asyncio client. So the wire format, the Lua scripts, routing and
dispatch exist once; only the I/O is awaited.

* ``await publish(event)`` / ``await publish_many(events)``: one atomic round trip, the same receipts
  (durable publish). Task messages for a broker on the bus's Redis ride in the same script call; a separate
  broker's ``send_many`` (blocking, in the dispatcher protocol) runs in a worker thread after the event
  is logged (pending-dispatch entry first, as in the blocking bus).
* ``async for event in bus.events(symbol=..., types=...)``, or handlers (sync or async) with
  ``subscribe*`` and ``await listen()``: self-healing subscribers, with backpressure (bus/aio/subscriber.py).
* state queries, ``read_log``, ``await is_connected()``, ``async with``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from bus.aio.cluster import read_nodes
from bus.aio.connection import (
    AsyncHeldConnection,
    blocking_twin,
    close_async_client,
    make_async_client,
    raw_async_connection,
)
from bus.aio.steps import run
from bus.aio.stream import EventStream, Types, Wanted, stop_reader, subscriptions_for
from bus.aio.subscriber import DEFAULT_BUFFER, AsyncSubscriber
from bus.config import Settings
from bus.core import state
from bus.core.bus import PING_TIMEOUT, known_symbols_steps, read_log_steps
from bus.core.connection import _client_where, describe_server, make_client, unreachable
from bus.core.dispatching import TaskDispatcher
from bus.core.durability import Durability
from bus.core.keys import ALL_PATTERN, Keys
from bus.core.publisher import Publisher, PublishReceipt
from bus.core.subscription import Counters, Handler, LostHandler
from bus.errors import ConfigError
from bus.events.model import TradeEvent, TradeEventType

__all__ = ["AsyncRedisEventBus"]


class AsyncRedisEventBus:
    """Publish TradeEvents, subscribe to them and query the state projection from asyncio code.

    Building it does no I/O; ``async with`` (or ``await connect()``) checks that Redis answers."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.asyncio.Redis | None = None,
        settings: Settings | None = None,
        key_prefix: str | None = None,
        log_maxlen: int | None = None,
        max_event_bytes: int | None = None,
        apply_state: bool = False,
        dispatcher: TaskDispatcher[Any] | None = None,
        buffer: int = DEFAULT_BUFFER,
    ) -> None:
        # Settings() would read the environment; a library class takes explicit arguments only.
        self.settings = s = settings if settings is not None else Settings.model_construct()
        self.url = url or (None if client is not None else s.bus_url)
        self._own_client = client is None
        self.client = client if client is not None else make_async_client(self.url or s.bus_url, s)
        if isinstance(self.client, AsyncRedisCluster) and s.publish_replicas:
            # WAIT must follow the writes on each master's own connection (the blocking bus does so)
            raise ConfigError("TRADEBUS_PUBLISH_REPLICAS is not supported by the asyncio bus on a Redis Cluster")
        self.where = describe_server(self.url) if self.url else _client_where(self.client)  # type: ignore[arg-type]
        self.keys = Keys(key_prefix or s.key_prefix)
        #: deliveries read ahead of a slow consumer, per subscriber (backpressure beyond it)
        self.buffer = buffer
        self.publisher = Publisher(
            self.client,  # type: ignore[arg-type]  # its steps stage on either kind of pipeline
            self.keys,
            log_maxlen=int(log_maxlen or s.log_maxlen),
            max_event_bytes=int(max_event_bytes or s.max_event_bytes),
            dispatcher=dispatcher,
            effects=self._effects(apply_state),
            durability=Durability.from_settings(s),
        )
        #: the connection single publishes send their one script call on (bus/aio/connection.py)
        self._held = AsyncHeldConnection(self.client)
        # A dispatcher is blocking: it is attached to a blocking client of the same server, used from
        # its worker thread only (pending-dispatch bookkeeping after a separate broker's send).
        self._dispatch_client: redis.Redis | None = None
        if dispatcher is not None:
            self._dispatch_client = make_client(self.url, s) if self.url else blocking_twin(self.client, s)
            dispatcher.attach(self._dispatch_client, self.keys)
        self._subscriber: AsyncSubscriber | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # of the running listen()
        self._stop_requested = False
        self._ping_conn: Any = None

    def __repr__(self) -> str:
        return f"AsyncRedisEventBus({self.where!r}, prefix={self.keys.prefix!r})"

    async def connect(self) -> AsyncRedisEventBus:
        """PING Redis; BusConnectionError (a redis.ConnectionError) when it does not answer."""
        try:
            await self.client.ping()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise unreachable(self.where, e) from None
        return self

    # --- publish ------------------------------------------------------------------------------------

    async def publish(self, event: TradeEvent) -> PublishReceipt:
        """Log + broadcast ``event`` atomically in one round trip, then its routed tasks (durable publish).

        Cancelled while awaiting Redis, the event is either logged and broadcast whole or not at all."""
        try:
            return await run(self._held, self.publisher.publish_steps(event))
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise unreachable(self.where, e) from None

    async def publish_many(self, events: Iterable[TradeEvent]) -> list[PublishReceipt]:
        """Publish a batch in one pipeline (one round trip). Nothing is sent if any event is invalid."""
        try:
            return await run(self.client, self.publisher.publish_many_steps(events))
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise unreachable(self.where, e) from None

    @property
    def dispatcher(self) -> TaskDispatcher[Any] | None:
        return self.publisher.dispatcher

    @property
    def apply_state(self) -> bool:
        """Whether publish also applies order/position events to the state projection, in its round trip."""
        return bool(self.publisher.effects)

    @apply_state.setter
    def apply_state(self, on: bool) -> None:
        self.publisher.effects = self._effects(on)

    def _effects(self, apply_state: bool) -> tuple[state.StateEffect, ...]:
        return (state.StateEffect(self.keys),) if apply_state else ()

    @property
    def publish_run_max(self) -> int:
        """Events per publish_many.lua call; 1 publishes every event with its own publish.lua call."""
        return self.publisher.run_max

    @publish_run_max.setter
    def publish_run_max(self, n: int) -> None:
        self.publisher.run_max = n

    # --- events(): one stream, its own connection -----------------------------------------------------

    def events(
        self,
        symbol: str | None = None,
        types: Types | None = None,
        *,
        buffer: int | None = None,
    ) -> EventStream:
        """``async for event in bus.events(symbol="XAUUSD", types=["order.created"])``: the events of a
        symbol (all when None) of the given types (all when None), in log order per symbol and type,
        once each. ``async with`` it to be subscribed before going on (see bus/aio/stream.py)."""
        subscriber = AsyncSubscriber(self.client, self.keys, self.settings, buffer=buffer or self.buffer)
        for wanted in subscriptions_for(symbol, types):
            subscriber.add(*wanted)
        return EventStream(subscriber)

    # --- handlers and listen() ----------------------------------------------------------------------

    @property
    def subscriber(self) -> AsyncSubscriber:
        if self._subscriber is None:
            self._subscriber = AsyncSubscriber(self.client, self.keys, self.settings, buffer=self.buffer)
        return self._subscriber

    @property
    def counters(self) -> Counters:
        """delivered, handler_errors, malformed, recovered_from_log, gaps_lost, events_lost, reconnects,
        foreign, forged, loop_errors."""
        return self.subscriber.counters

    def on_lost_events(self, callback: LostHandler) -> None:
        """Call ``callback(LostEvents)`` when events a subscription needed were trimmed from the log
        before it could catch up (as ``RedisEventBus.on_lost_events``); runs in the reader task."""
        self.subscriber.on_lost_events(callback)

    def subscribe(self, symbol: str, event_type: TradeEventType | str, handler: Handler) -> None:
        """Call ``handler(event)`` (awaited when it returns an awaitable) for each ``event_type`` event
        of ``symbol``."""
        (wanted,) = subscriptions_for(symbol, event_type)
        self._add(wanted, handler)

    def subscribe_all(self, symbol: str, handler: Handler) -> None:
        """Every event type of one symbol."""
        (wanted,) = subscriptions_for(symbol, None)
        self._add(wanted, handler)

    def subscribe_type(self, event_type: TradeEventType | str, handler: Handler) -> None:
        """One event type, every symbol."""
        (wanted,) = subscriptions_for(None, event_type)
        self._add(wanted, handler)

    def subscribe_everything(self, handler: Handler) -> None:
        """Every event of every symbol (monitoring)."""
        self._add((ALL_PATTERN, True, None, None), handler)

    def _add(self, wanted: Wanted, handler: Handler) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        self.subscriber.add(*wanted).handlers.append(handler)

    async def listen(self) -> None:
        """Deliver events to the handlers until ``stop()`` or cancellation. One loop per bus; the
        subscriptions keep their place between loops (the next one catches up from the log)."""
        if self._loop is not None:
            raise RuntimeError("this bus is already listening; use another AsyncRedisEventBus for a separate loop")
        self._loop = asyncio.get_running_loop()
        subscriber = self.subscriber
        reader = asyncio.create_task(subscriber.read(), name="tradebus-listener")
        try:
            while not self._stop_requested:
                delivery = await subscriber.next()
                if delivery is not None:
                    await subscriber.call_handlers(*delivery)
        finally:
            self._stop_requested, self._loop = False, None
            await stop_reader(reader)

    def stop(self) -> None:
        """Ask ``listen()`` to return after the event it is handling. Safe from handlers, from
        ``loop.add_signal_handler`` callbacks and from other threads; kept until a loop sees it."""
        self._stop_requested = True
        loop, subscriber = self._loop, self._subscriber
        if loop is None or subscriber is None:
            return
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if here:
            subscriber.wake()
        else:
            loop.call_soon_threadsafe(subscriber.wake)

    async def wait_until_listening(self, timeout: float) -> bool:
        """True once ``listen()`` is subscribed (events published from now on will be delivered)."""
        ready = self.subscriber.ready
        if ready.is_set():
            return True
        try:
            await asyncio.wait_for(ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # --- log and state ------------------------------------------------------------------------------

    async def read_log(self, symbol: str, after: str = "-", count: int | None = None) -> list[tuple[str, TradeEvent]]:
        """Logged events of ``symbol`` with a log id greater than ``after``, oldest first."""
        return await run(self.client, read_log_steps(self.keys, symbol, after, count))

    async def known_symbols(self) -> list[str]:
        return await run(self.client, known_symbols_steps(self.keys))

    async def get_order(self, symbol: str, order_id: str) -> dict[str, str] | None:
        return await run(self.client, state.order_steps(self.keys, symbol, order_id))

    async def get_position(self, symbol: str, position_id: str) -> dict[str, str] | None:
        return await run(self.client, state.position_steps(self.keys, symbol, position_id))

    async def get_open_orders(self, symbol: str) -> list[dict[str, str]]:
        return await run(self.client, state.open_orders_steps(self.client, self.keys, symbol))

    async def get_active_positions(self, symbol: str) -> list[dict[str, str]]:
        return await run(self.client, state.active_positions_steps(self.client, self.keys, symbol))

    # --- connection ---------------------------------------------------------------------------------

    async def is_connected(self) -> bool:
        """A live PING on a dedicated connection with a short timeout (no retries)."""
        try:
            if self._ping_conn is None:
                await read_nodes(self.client)
                self._ping_conn = raw_async_connection(self.client, PING_TIMEOUT)
            await self._ping_conn.send_command("PING")
            return await self._ping_conn.read_response() in (b"PONG", "PONG", True)
        except (redis.RedisError, OSError):
            if self._ping_conn is not None:
                await self._ping_conn.disconnect(nowait=True)
                self._ping_conn = None  # the next check opens a new one (on a Cluster: on the next node)
            return False

    async def aclose(self) -> None:
        """Stop ``listen()`` and release the connections this bus opened (a given client stays open)."""
        if self._loop is not None:
            self.stop()
        await self._held.aclose()
        if self._ping_conn is not None:
            await self._ping_conn.disconnect()
            self._ping_conn = None
        if self._dispatch_client is not None:
            self._dispatch_client.close()
        if self._own_client:
            await close_async_client(self.client)

    async def __aenter__(self) -> AsyncRedisEventBus:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
