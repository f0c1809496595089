"""EventStream: ``async for event in bus.events(...)``, with its own subscriber and connection.

The reader starts on entering ``async with`` (which returns once subscribed: every event published
after that is delivered) or on the first ``__anext__``. Leaving the ``async with``, ``aclose()``,
cancelling the consuming task (a TaskGroup ending included) or dropping the stream after ``break``
stops the reader and releases its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from bus.aio.subscriber import AsyncSubscriber
from bus.core.keys import ALL_PATTERN, channel, symbol_pattern, type_pattern
from bus.core.subscription import Counters
from bus.events.model import TradeEvent, TradeEventType
from bus.events.rules import validate_symbol

#: (name, is a pattern, symbol, type value) of one Redis subscription
Wanted = tuple[str, bool, str | None, str | None]
#: one event type or several
Types = TradeEventType | str | Iterable[TradeEventType | str]


def subscriptions_for(symbol: str | None, types: Types | None) -> list[Wanted]:
    """The Redis subscriptions for events of ``symbol`` (all when None) of ``types`` (all when None):
    one channel per type of a symbol, one pattern per type of every symbol, else one pattern."""
    if symbol is not None:
        validate_symbol(symbol)
    if types is None:
        return [(symbol_pattern(symbol), True, symbol, None) if symbol else (ALL_PATTERN, True, None, None)]
    one = isinstance(types, str | TradeEventType)
    values = [TradeEventType.parse(t).value for t in ([types] if one else types)]  # type: ignore[union-attr]
    if not values:
        raise ValueError("types: give at least one event type, or None for every type")
    if symbol is not None:
        return [(channel(symbol, t), False, symbol, t) for t in dict.fromkeys(values)]
    return [(type_pattern(t), True, None, t) for t in dict.fromkeys(values)]


class EventStream:
    """An async iterator of TradeEvents, in log order per subscription, once each (see the module doc)."""

    def __init__(self, subscriber: AsyncSubscriber) -> None:
        self._subscriber = subscriber
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def counters(self) -> Counters:
        """delivered, malformed, recovered_from_log, gaps_lost, reconnects, foreign."""
        return self._subscriber.counters

    @property
    def buffered(self) -> int:
        """Events read ahead and waiting for the consumer (at most the stream's buffer)."""
        return self._subscriber.buffered

    def _start(self) -> None:
        if self._closed:
            raise RuntimeError("this event stream is closed")
        if self._reader is None:
            self._reader = asyncio.create_task(self._subscriber.read(), name="tradebus-events")

    async def wait_ready(self) -> None:
        """Return once subscribed (reconnecting as long as it takes: bound it with ``asyncio.timeout``);
        raise what stopped the reader (BusPermissionError when Redis refuses the channels)."""
        self._start()
        assert self._reader is not None
        ready = asyncio.ensure_future(self._subscriber.ready.wait())
        try:
            await asyncio.wait((ready, self._reader), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if self._reader.done():
            self._reader.result()  # raises what ended it

    async def __aenter__(self) -> EventStream:
        await self.wait_ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> TradeEvent:
        self._start()
        subscriber = self._subscriber
        while not self._closed:
            delivery = await subscriber.next()
            if delivery is not None:
                subscriber.counters.delivered += 1
                return delivery[1]
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the reader and release its connection; iterating then ends."""
        self._closed = True
        self._subscriber.wake()  # a consumer waiting in another task sees the stream closed
        if self._reader is not None:
            await stop_reader(self._reader)

    def __del__(self) -> None:
        # `async for ... break` without `async with`: the dropped stream must not leave its reader running
        reader = self._reader
        if reader is not None and not reader.done():
            with contextlib.suppress(RuntimeError):  # the loop is already closed: nothing runs any more
                reader.cancel()


async def stop_reader(reader: asyncio.Task[Any]) -> None:
    """Cancel a reader task and wait until it has released its connection.

    What ended the reader by itself was already raised to its consumer (``AsyncSubscriber.next``);
    only a cancellation of the caller's own task propagates from here."""
    reader.cancel()
    try:
        await reader
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # noqa: BLE001,S110 - surfaced through AsyncSubscriber.next already
        pass
