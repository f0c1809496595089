"""bus.aio beside the blocking bus, bare redis.asyncio and FastStream, all in one run.

    python bench/bench_aio.py [--url redis://...] [--n 1000] [--batch 100] [--runs 15] [--sub-n 20000]

Publish: ``await bus.publish`` / ``await bus.publish_many`` beside the blocking ``publish`` /
``publish_many`` and beside bare redis.asyncio sending the same commands: EVALSHA of the same script
with the same arguments, and a hand-written pipeline (XADD + PUBLISH per event). The bare paths encode
each event inside the clock (``event.encode()``, as any publisher must) with keys and channel fixed
outside it. Paths run in many short interleaved rounds (a shared box's load bursts hit every path alike);
events/s are medians.

Subscribe: one consumer's events/s, each delivered as a ``TradeEvent``: ``async for`` over
``bus.events()`` and a ``listen()`` handler, beside FastStream's Redis subscriber (a pattern
subscription whose handler takes the decoded JSON dict, its cheapest form). Method as in
bench_subscribe.py: the consumer holds the first event while --sub-n events are published, then the
clock runs until the last one is consumed (consumption only). FastStream is not a dependency of
tradebus: ``pip install "faststream[redis]"`` to run this bench.

Without --url it starts its own redis-server (bus.embedded), so nothing else shares it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio

from bus import RedisEventBus, TradeEvent
from bus.aio import AsyncRedisEventBus
from bus.core.keyspace import delete_matching
from bus.core.publisher import PUBLISH, PUBLISH_MANY
from bus.embedded import EmbeddedRedis

MAXLEN = 100_000


def make_events(n: int, symbol: str = "XAUUSD") -> list[TradeEvent]:
    return [TradeEvent.create_order_created(symbol=symbol, order_id=str(i), order_type="BUY", price=2000.50,
                                            volume=0.1, sl=1995.0, tp=2010.0) for i in range(n)]  # fmt: skip


async def publish_paths(url: str, prefix: str, a: argparse.Namespace) -> dict[str, float]:
    events = make_events(a.n)
    abus = AsyncRedisEventBus(url, key_prefix=prefix, log_maxlen=MAXLEN)
    sbus = RedisEventBus(url, key_prefix=f"{prefix}-sync", log_maxlen=MAXLEN)
    bare = redis.asyncio.Redis.from_url(url)
    await abus.publish(events[0])  # warm up: script loaded, symbol registered
    sbus.publish(events[0])
    # the script calls the bus makes, by hand: keys and channel fixed, each event encoded in the clock
    bare_prefix = f"{prefix}-bare"
    keys = [f"{bare_prefix}:{{XAUUSD}}:log", f"{bare_prefix}:{{XAUUSD}}:heads", f"{bare_prefix}:{{XAUUSD}}:pending"]
    log_key, chan, t = keys[0], "trades:XAUUSD:order.created", "order.created"

    async def aio_each() -> None:
        for e in events:
            await abus.publish(e)

    async def bare_evalsha_each() -> None:
        for e in events:
            await bare.execute_command("EVALSHA", PUBLISH.sha, 3, *keys, e.encode(), chan, t, MAXLEN, b"0", 0,
                                       bare_prefix)  # fmt: skip

    async def bare_pipeline_each() -> None:
        for e in events:
            p = e.encode()
            pipe = bare.pipeline(transaction=False)
            pipe.xadd(log_key, {"type": t, "event": p}, maxlen=MAXLEN, approximate=True)
            pipe.publish(chan, p)
            await pipe.execute()

    async def sync_each() -> None:
        for e in events:
            sbus.publish(e)

    async def aio_batches() -> None:
        for i in range(0, a.n, a.batch):
            await abus.publish_many(events[i : i + a.batch])

    async def bare_evalsha_batches() -> None:
        for i in range(0, a.n, a.batch):
            margs: list[Any] = [MAXLEN, bare_prefix]
            for e in events[i : i + a.batch]:
                margs += (e.encode(), chan, t, b"", 0)
            pipe = bare.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", PUBLISH_MANY.sha, 3, *keys, *margs)
            await pipe.execute()

    async def bare_pipeline_batches() -> None:
        for i in range(0, a.n, a.batch):
            pipe = bare.pipeline(transaction=False)
            for e in events[i : i + a.batch]:
                p = e.encode()
                pipe.xadd(log_key, {"type": t, "event": p}, maxlen=MAXLEN, approximate=True)
                pipe.publish(chan, p)
            await pipe.execute()

    async def sync_batches() -> None:
        for i in range(0, a.n, a.batch):
            sbus.publish_many(events[i : i + a.batch])

    paths: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("aio publish", aio_each),
        ("bare redis.asyncio EVALSHA publish.lua", bare_evalsha_each),
        ("bare redis.asyncio pipeline XADD+PUBLISH", bare_pipeline_each),
        ("blocking publish", sync_each),
        (f"aio publish_many, {a.batch}", aio_batches),
        (f"bare redis.asyncio EVALSHA publish_many.lua, {a.batch}", bare_evalsha_batches),
        (f"bare redis.asyncio pipeline, {a.batch} x XADD+PUBLISH", bare_pipeline_batches),
        (f"blocking publish_many, {a.batch}", sync_batches),
    ]
    samples: dict[str, list[float]] = {name: [] for name, _ in paths}
    for _ in range(a.runs):  # interleaved rounds, so load changes hit every path alike
        for name, fn in paths:
            t0 = time.perf_counter()
            await fn()
            samples[name].append(a.n / (time.perf_counter() - t0))
    await abus.aclose()
    await bare.aclose()
    sbus.close()
    return {name: statistics.median(v) for name, v in samples.items()}


async def consume_stream(url: str, prefix: str, events: list[TradeEvent]) -> float:
    async with AsyncRedisEventBus(url, key_prefix=prefix) as bus, bus.events(symbol=events[0].symbol) as stream:
        return await hold_then_consume(url, prefix, events, stream.__anext__)


async def consume_handler(url: str, prefix: str, events: list[TradeEvent]) -> float:
    async with AsyncRedisEventBus(url, key_prefix=prefix) as bus:
        queue: asyncio.Queue[TradeEvent] = asyncio.Queue()
        bus.subscribe_all(events[0].symbol, queue.put_nowait)
        listener = asyncio.create_task(bus.listen())
        await bus.wait_until_listening(10)
        try:
            return await hold_then_consume(url, prefix, events, queue.get)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)


async def hold_then_consume(
    url: str, prefix: str, events: list[TradeEvent], next_event: Callable[[], Awaitable[TradeEvent]]
) -> float:
    pub = RedisEventBus(url, key_prefix=prefix)
    pub.publish(events[0])
    first = await next_event()  # the consumer holds this one while the rest is published
    assert first.event_id == events[0].event_id
    for i in range(0, len(events), 500):
        pub.publish_many(events[i : i + 500])
    pub.close()
    t0 = time.perf_counter()
    for _ in events:
        await next_event()
    return len(events) / (time.perf_counter() - t0)


async def consume_faststream(url: str, prefix: str, events: list[TradeEvent]) -> float:
    from faststream.redis import PubSub, RedisBroker

    broker = RedisBroker(url, logger=None)
    gate, done = asyncio.Event(), asyncio.Event()
    count, n = 0, len(events) + 1  # n grows by the probes below

    @broker.subscriber(channel=PubSub(f"trades:{events[0].symbol}:*", pattern=True))
    async def handle(body: dict[str, Any]) -> None:
        nonlocal count
        if count == 0:
            await gate.wait()
        count += 1
        if count == n:
            done.set()

    await broker.start()
    try:
        pub = RedisEventBus(url, key_prefix=prefix)
        while pub.publish(events[0]).subscribers == 0:  # probes until FastStream is subscribed
            n += 1
            await asyncio.sleep(0.05)
        for i in range(0, len(events), 500):
            pub.publish_many(events[i : i + 500])
        pub.close()
        t0 = time.perf_counter()
        gate.set()
        await asyncio.wait_for(done.wait(), 300)
        return len(events) / (time.perf_counter() - t0)
    finally:
        await broker.stop()


async def subscribe_paths(url: str, prefix: str, a: argparse.Namespace) -> dict[str, float]:
    paths: list[tuple[str, Callable[[str, str, list[TradeEvent]], Awaitable[float]]]] = [
        ("aio events(): async for -> TradeEvent", consume_stream),
        ("aio listen(): handler(TradeEvent)", consume_handler),
        ("FastStream RedisBroker pattern subscriber (dict)", consume_faststream),
    ]
    samples: dict[str, list[float]] = {name: [] for name, _ in paths}
    for _ in range(a.sub_runs):
        for name, fn in paths:
            events = make_events(a.sub_n, f"BENCH{uuid.uuid4().hex[:6].upper()}")
            samples[name].append(await fn(url, prefix, events))
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--sub-n", type=int, default=20_000)
    ap.add_argument("--sub-runs", type=int, default=3)
    a = ap.parse_args()
    server = None if a.url else EmbeddedRedis().start()
    url = a.url or server.url  # type: ignore[union-attr]
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        pub = asyncio.run(publish_paths(url, prefix, a))
        for name, value in pub.items():
            print(f"{name:55s} {value:10,.0f} events/s")
        k = list(pub)
        print(f"publish: aio vs bare EVALSHA {pub[k[1]] / pub[k[0]]:.2f}x, vs bare pipeline "
              f"{pub[k[2]] / pub[k[0]]:.2f}x, vs blocking {pub[k[3]] / pub[k[0]]:.2f}x (target <= 1.3x)")  # fmt: skip
        print(f"publish_many: aio vs bare EVALSHA {pub[k[5]] / pub[k[4]]:.2f}x, vs bare pipeline "
              f"{pub[k[6]] / pub[k[4]]:.2f}x, vs blocking {pub[k[7]] / pub[k[4]]:.2f}x")  # fmt: skip
        sub = asyncio.run(subscribe_paths(url, prefix, a))
        for name, value in sub.items():
            print(f"{name:55s} {value:10,.0f} events/s")
        s = list(sub.values())
        print(f"subscriber: async for / FastStream {s[0] / s[2]:.1f}x, handler / FastStream {s[1] / s[2]:.1f}x "
              "(target >= 5x)")  # fmt: skip
        r = redis.Redis.from_url(url)
        delete_matching(r, f"{prefix}*")
        r.close()
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
