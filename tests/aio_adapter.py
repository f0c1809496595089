"""The blocking bus's API over an AsyncRedisEventBus, so the bus suites (tests/core) run for both kinds.

A thin adapter: every call is the async bus's own, awaited on an event loop that this adapter runs
in a thread of its own (a handler that blocks holds only this bus's loop, as a blocking listener
holds only its thread). ``client`` is a blocking client of the same server, for the tests' own
inspection and fault injection (``script_flush``, ``zrange``, logging an event without its broadcast).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import redis

from bus.aio import AsyncRedisEventBus
from bus.core.subscription import Counters

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread until ``close()``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="aio-adapter", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def do(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the loop's thread (asyncio objects are not thread-safe)."""

        async def inside() -> T:
            return fn(*args)

        return self.call(inside())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class ListenHandle:
    """What ``listen_in_thread`` returns, for a ``listen()`` task on the adapter's loop."""

    def __init__(self, adapter: AsyncBusAdapter, future: concurrent.futures.Future[None]) -> None:
        self._adapter, self._future = adapter, future

    def stop(self) -> None:
        self._adapter.stop()

    def join(self, timeout: float | None = None) -> None:
        concurrent.futures.wait([self._future], timeout)

    def is_alive(self) -> bool:
        return not self._future.done()

    def wait_ready(self, timeout: float) -> bool:
        return self._adapter.wait_until_listening(timeout)


class AsyncBusAdapter:
    """``RedisEventBus(url, **kw)``'s API, each call awaited on an AsyncRedisEventBus."""

    def __init__(self, url: str, **kw: Any) -> None:
        self._loop = LoopThread()
        try:
            self.aio: AsyncRedisEventBus = self._loop.do(lambda: AsyncRedisEventBus(url, **kw))
            self._loop.call(self.aio.connect())  # the blocking constructor's PING
        except BaseException:
            self._loop.close()
            raise
        self.url, self.keys = url, self.aio.keys
        self.client = redis.Redis.from_url(url)
        self._listening: ListenHandle | None = None

    def publish(self, event: Any) -> Any:
        return self._loop.call(self.aio.publish(event))

    def publish_many(self, events: Any) -> Any:
        return self._loop.call(self.aio.publish_many(events))

    @property
    def publish_run_max(self) -> int:
        return self.aio.publish_run_max

    @publish_run_max.setter
    def publish_run_max(self, n: int) -> None:
        self.aio.publish_run_max = n

    @property
    def dispatcher(self) -> Any:
        return self.aio.dispatcher

    @property
    def counters(self) -> Counters:
        return self._loop.do(lambda: self.aio.counters)

    def subscribe(self, *args: Any) -> None:
        self._loop.do(self.aio.subscribe, *args)

    def on_lost_events(self, *args: Any) -> None:
        self._loop.do(self.aio.on_lost_events, *args)

    def subscribe_all(self, *args: Any) -> None:
        self._loop.do(self.aio.subscribe_all, *args)

    def subscribe_type(self, *args: Any) -> None:
        self._loop.do(self.aio.subscribe_type, *args)

    def subscribe_everything(self, *args: Any) -> None:
        self._loop.do(self.aio.subscribe_everything, *args)

    def listen(self) -> None:
        self._loop.call(self.aio.listen())

    def listen_in_thread(self) -> ListenHandle:
        self._listening = ListenHandle(self, self._loop.submit(self.aio.listen()))
        return self._listening

    def stop(self) -> None:
        self.aio.stop()  # thread-safe

    def wait_until_listening(self, timeout: float) -> bool:
        return self._loop.call(self.aio.wait_until_listening(timeout))

    def read_log(self, *args: Any, **kw: Any) -> Any:
        return self._loop.call(self.aio.read_log(*args, **kw))

    def known_symbols(self) -> list[str]:
        return self._loop.call(self.aio.known_symbols())

    def get_order(self, *args: Any) -> Any:
        return self._loop.call(self.aio.get_order(*args))

    def get_position(self, *args: Any) -> Any:
        return self._loop.call(self.aio.get_position(*args))

    def get_open_orders(self, *args: Any) -> Any:
        return self._loop.call(self.aio.get_open_orders(*args))

    def get_active_positions(self, *args: Any) -> Any:
        return self._loop.call(self.aio.get_active_positions(*args))

    @property
    def is_connected(self) -> bool:
        return self._loop.call(self.aio.is_connected())

    def close(self) -> None:
        if self._loop.thread.is_alive():
            if self._listening is not None:
                self._listening.stop()
                self._listening.join(5)
            self._loop.call(self.aio.aclose())
            self._loop.close()
        self.client.close()

    def __enter__(self) -> AsyncBusAdapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
