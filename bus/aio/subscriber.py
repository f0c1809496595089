"""The asyncio subscriber: one unpooled connection, a reader task, a bounded queue to the consumer.

It heals itself exactly as the blocking listener (self-healing subscribers, bad input) because it runs
the same I/O-free core (bus/core/healing.py: what to deliver, what is a gap, what is malformed; the
catch-up reads as steps): reconnect with backoff, gap detection from the broadcast meta, catch-up from
the log, once each, in order.

Backpressure: the reader puts each delivery into a bounded ``asyncio.Queue``. When the consumer falls
behind and the queue is full, the reader stops reading, so the socket and then Redis buffer for it;
this process's memory stays bounded by the queue. If Redis drops the slow client
(``client-output-buffer-limit pubsub``), the reader reconnects and the gap is healed from the log.

Reads carry no timer each (a timeout per read costs more than the read); a tick every
``POLL_SECONDS`` interrupts a read only when nothing arrived since the last tick, to PING an idle
connection or declare it dead (``Liveness``) and to send subscriptions added meanwhile.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
from typing import Any

import redis
import redis.asyncio

from bus.aio.cluster import connection_username, read_nodes
from bus.aio.connection import raw_async_connection
from bus.aio.steps import run
from bus.config import Settings
from bus.core.healing import Healer, Liveness, is_confirmation, message_of, permission_error, subscribe_commands
from bus.core.keys import Keys
from bus.core.subscriber import BACKOFF_MAX, BACKOFF_START, POLL_SECONDS
from bus.core.subscription import Counters, LostHandler, Subscription
from bus.errors import BusPermissionError
from bus.events.model import TradeEvent
from bus.observability import tracing
from bus.observability.logs import event_fields

log = logging.getLogger(__name__)
# Jitter from a generator of our own: the global one belongs to the application (which may seed it).
_JITTER = random.Random()

#: deliveries the reader may queue ahead of a slow consumer
DEFAULT_BUFFER = 1000

Delivery = tuple[Subscription, TradeEvent]


class AsyncSubscriber:
    """Subscriptions on one connection: ``read()`` is the reader task, ``next()`` takes its deliveries."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, settings: Settings, *, buffer: int = DEFAULT_BUFFER):
        self._client, self._settings, self._prefix = client, settings, keys.prefix
        self.counters = Counters()
        self._healer = Healer(keys, self.counters)
        self._subs: dict[bytes, Subscription] = {}
        self._unsent: list[Subscription] = []
        # None wakes a waiting consumer to look at `ended` (or its own stop request)
        self._queue: asyncio.Queue[Delivery | None] = asyncio.Queue(max(1, buffer))
        self.ready = asyncio.Event()
        self.ended: BaseException | None = None  # why the reader stopped by itself
        self._conn: Any = None
        self._reading = False  # the reader waits for a reply (the tick may interrupt that wait)
        self._interrupted = False
        self._received = 0  # replies read, for the tick to tell idle from busy
        self._tick_handle: asyncio.TimerHandle | None = None
        self._liveness = Liveness(0, settings.redis_socket_timeout, 0.0)  # each connect starts its own

    def add(self, name: str, pattern: bool, symbol: str | None, type_value: str | None) -> Subscription:
        sub = self._subs.get(name.encode())
        if sub is None:
            sub = self._subs[name.encode()] = Subscription(name, pattern, symbol, type_value)
            self._unsent.append(sub)
        return sub

    # --- the consumer's side -------------------------------------------------------------------------

    async def next(self) -> Delivery | None:
        """The next delivery, in order; None when woken (``wake``); raises what ended the reader."""
        queue = self._queue
        if queue.empty() and self.ended is not None:
            raise self.ended
        return await queue.get()

    def wake(self) -> None:
        """Make a waiting ``next()`` return None (a full queue needs no waking: ``next`` returns at once)."""
        if not self._queue.full():
            self._queue.put_nowait(None)

    @property
    def buffered(self) -> int:
        """Deliveries waiting for the consumer (at most the buffer size)."""
        return self._queue.qsize()

    async def call_handlers(self, sub: Subscription, event: TradeEvent) -> None:
        """Each handler of ``sub`` in turn, awaited when it returns an awaitable; one that raises is
        counted and logged, and the others and the loop go on (as in the blocking listener)."""
        with tracing.delivery_span(sub.name, event):  # a child of the event's publish, when traced
            for handler in sub.handlers:
                try:
                    result = handler(event)
                    if inspect.isawaitable(result):
                        await result
                    self.counters.delivered += 1
                except Exception:  # noqa: BLE001 - one bad handler must not stop the others or the loop
                    self.counters.handler_errors += 1
                    log.exception("handler %r failed on event %s", handler, event.event_id, extra=event_fields(event))

    async def _deliver(self, sub: Subscription, event: TradeEvent) -> None:
        await self._queue.put((sub, event))  # blocks while the consumer is behind: backpressure

    # --- the reader ------------------------------------------------------------------------------------

    async def read(self) -> None:
        """The reader task: connect, subscribe, heal, queue deliveries; reconnect with backoff; until cancelled."""
        loop = asyncio.get_running_loop()
        reader = asyncio.current_task()
        assert reader is not None
        self._tick_handle = loop.call_later(POLL_SECONDS, self._tick, loop, reader, -1)
        delay, self.ended = BACKOFF_START, None
        try:
            while True:
                try:
                    if self._conn is None:
                        await self._connect()
                        delay = BACKOFF_START
                    elif self._unsent:
                        await self._subscribe(self._take_unsent())
                    await self._pump()
                except redis.exceptions.NoPermissionError as e:
                    # an ACL refusal is permanent: stop with an error that says what to grant
                    user = connection_username(self._client)
                    error = permission_error(e, user, self._subs.values(), self._prefix)
                    log.error("%s", error)
                    raise error from None
                except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                    await self._recover(e, delay, "subscriber connection lost")
                    delay = min(delay * 2, BACKOFF_MAX)
                except Exception as e:  # noqa: BLE001 - nothing a message or a reply holds may end the reader
                    self.counters.loop_errors += 1
                    log.exception("unexpected error in the subscriber reader")
                    await self._recover(e, delay, "subscriber reader failed")  # a fresh connection heals from the log
                    delay = min(delay * 2, BACKOFF_MAX)
        except BaseException as e:
            if not isinstance(e, asyncio.CancelledError):  # the consumer must not wait for ever
                self.ended = e if isinstance(e, Exception) else RuntimeError(f"subscriber stopped: {e!r}")
                if not isinstance(e, BusPermissionError):  # that one was logged with what to grant
                    log.critical("subscriber reader stopped: %s: %s", type(e).__name__, e, exc_info=True)
                self.wake()
            raise
        finally:
            if self._tick_handle is not None:
                self._tick_handle.cancel()
            await self._drop()

    @property
    def error(self) -> BusPermissionError | None:
        """Why the reader stopped by itself when Redis refused it a channel or key, else None."""
        return self.ended if isinstance(self.ended, BusPermissionError) else None

    def _tick(self, loop: asyncio.AbstractEventLoop, reader: asyncio.Task[None], seen: int) -> None:
        if self._received == seen and self._reading:  # idle: wake the reader for health and new subscriptions
            self._interrupted = True
            reader.cancel()
        elif self._received != seen and self._conn is not None:
            self._liveness.heard(loop.time())
        self._tick_handle = loop.call_later(POLL_SECONDS, self._tick, loop, reader, self._received)

    async def _reply(self, conn: Any) -> Any:
        """The next reply, or None when the tick interrupted an idle wait."""
        self._reading = True
        try:
            # no timer per read; on a real error the connection is dropped by the loop (_drop)
            return await conn.read_response(timeout=math.inf, disconnect_on_error=False)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._interrupted and task is not None and task.uncancel() == 0:
                return None
            raise
        finally:
            self._reading = self._interrupted = False

    async def _recover(self, e: Exception, delay: float, what: str) -> None:
        """Drop the connection and wait ``delay`` (jittered): the next round reconnects, resubscribes
        and catches up from the log (self-healing subscribers)."""
        await self._drop()
        self.counters.reconnects += 1
        log.warning("%s (%s: %s); reconnecting in %.2fs", what, type(e).__name__, e, delay)
        await asyncio.sleep(delay * (0.5 + _JITTER.random() / 2))

    def on_lost_events(self, callback: LostHandler) -> None:
        """Call ``callback(LostEvents)`` (in the reader task) when events a subscription needs were
        trimmed from the log before it read them (bus/core/catchup.py)."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        self._healer.catch_up.lost_handlers.append(callback)

    def _take_unsent(self) -> list[Subscription]:
        subs, self._unsent = self._unsent, []
        return subs

    async def _drop(self) -> None:
        self.ready.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect(nowait=True)

    async def _connect(self) -> None:
        self._take_unsent()  # everything is (re)subscribed below
        s = self._settings
        await read_nodes(self._client)
        self._conn = raw_async_connection(self._client, s.redis_socket_timeout)
        await self._conn.connect()
        self._liveness = Liveness(
            s.redis_health_check_interval, s.redis_socket_timeout, asyncio.get_running_loop().time()
        )
        await self._subscribe(list(self._subs.values()))

    async def _subscribe(self, subs: list[Subscription]) -> None:
        """SUBSCRIBE/PSUBSCRIBE, wait for the confirmations, catch up from the log, then go on."""
        if not subs:
            if self._subs:
                self.ready.set()
            return
        await run(self._client, self._healer.baseline(subs))
        conn, loop = self._conn, asyncio.get_running_loop()
        pending, early = 0, []
        for command in subscribe_commands(subs):
            await conn.send_command(*command)
            pending += len(command) - 1
        deadline = loop.time() + self._settings.redis_socket_timeout
        while pending:
            reply = await conn.read_response(timeout=max(0.0, deadline - loop.time()), disconnect_on_error=False)
            if reply is None:
                raise redis.TimeoutError("no reply to SUBSCRIBE")
            if is_confirmation(reply):
                pending -= 1
            else:
                early.append(reply)
        for s in subs:
            await run(self._client, self._healer.catch_up.after_subscribe(s), self._deliver)
        for reply in early:
            await self._on_reply(reply)
        self.ready.set()

    async def _pump(self) -> None:
        conn = self._conn
        reply = await self._reply(conn)
        if reply is None:
            if self._liveness.ping_due(asyncio.get_running_loop().time()):
                await conn.send_command("PING")
            return
        self._received += 1
        await self._on_reply(reply)

    async def _on_reply(self, reply: Any) -> None:
        found = message_of(self._subs, reply)
        if found is None:
            return  # pong and (p)subscribe confirmations need nothing
        sub, chan, data = found
        healer = self._healer
        arrival = healer.arrival(sub, chan, data)
        if arrival is None:
            return
        if arrival.suspect and not await run(self._client, healer.settle(sub, arrival), self._deliver):
            return
        await self._deliver(sub, arrival.event)
        healer.delivered(sub, arrival)
