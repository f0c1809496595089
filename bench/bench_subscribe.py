"""One subscriber's consume rate: bus listener delivering TradeEvent objects vs bare redis-py + orjson.

    python bench/bench_subscribe.py [--url redis://...] [--n 20000] [--runs 3]

Method: the first message blocks the handler while the publisher sends --n events (they queue in the
subscriber's socket / Redis output buffer; keep n * ~450 B under the 32 MB pubsub limit); the clock
runs from releasing the handler until the last event is handled. So it measures consumption only.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid

import orjson
import redis

from bus import RedisEventBus, TradeEvent
from bus.core.keyspace import delete_matching
from bus.embedded import EmbeddedRedis


def make_events(n: int, symbol: str) -> list[TradeEvent]:
    return [TradeEvent.create_order_created(symbol=symbol, order_id=str(i), order_type="BUY", price=2000.50,
                                            volume=0.1, sl=1995.0, tp=2010.0) for i in range(n)]  # fmt: skip


def run_bus(url: str, prefix: str, events: list[TradeEvent], trusted: bool) -> float:
    sub, pub = RedisEventBus(url, key_prefix=prefix), RedisEventBus(url, key_prefix=prefix)
    gate, done = threading.Event(), threading.Event()
    count = [0]
    n = len(events) + 1

    def handler(event: TradeEvent) -> None:
        if count[0] == 0:
            gate.wait()
        count[0] += 1
        if count[0] == n:
            done.set()

    sub.subscribe_all(events[0].symbol, handler)
    h = sub.listen_in_thread()
    h.wait_ready(10)
    pub.publish(events[0])
    for i in range(0, len(events), 500):
        pub.publish_many(events[i : i + 500])
    t0 = time.perf_counter()
    gate.set()
    done.wait(120)
    elapsed = time.perf_counter() - t0
    h.stop()
    h.join(5)
    sub.close()
    pub.close()
    return len(events) / elapsed


def run_bare(url: str, prefix: str, events: list[TradeEvent], validate: bool) -> float:
    client = redis.Redis.from_url(url)
    ps = client.pubsub(ignore_subscribe_messages=True)
    ps.psubscribe(f"trades:{events[0].symbol}:*")
    while ps.get_message(timeout=1) is None and not ps.subscribed:
        pass
    pub = RedisEventBus(url, key_prefix=prefix)
    pub.publish(events[0])
    while ps.get_message(timeout=1) is None:  # the first one arrives; now queue the rest behind it
        pass
    for i in range(0, len(events), 500):
        pub.publish_many(events[i : i + 500])
    t0 = time.perf_counter()
    got = 0
    while got < len(events):
        m = ps.get_message(timeout=1)
        if m is not None:
            obj = orjson.loads(m["data"])
            if validate:
                for k in ("log_id", "prev", "prev_t", "bus"):
                    obj.pop(k, None)
                TradeEvent.from_dict(obj)
            got += 1
    elapsed = time.perf_counter() - t0
    ps.close()
    pub.close()
    client.close()
    return len(events) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    server = None if a.url else EmbeddedRedis().start()
    url = a.url or server.url  # type: ignore[union-attr]
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        events = make_events(a.n, f"BENCH{uuid.uuid4().hex[:6].upper()}")
        paths = [
            (
                "bare redis-py PubSub + orjson.loads (dict)",
                lambda: run_bare(url, prefix, events, False),
            ),
            (
                "bare redis-py PubSub + TradeEvent.from_dict",
                lambda: run_bare(url, prefix, events, True),
            ),
            ("bus listener -> handler(TradeEvent)", lambda: run_bus(url, prefix, events, True)),
        ]
        samples: dict[str, list[float]] = {name: [] for name, _ in paths}
        for _ in range(a.runs):
            for name, fn in paths:
                samples[name].append(fn())
        for name, v in samples.items():
            print(f"{name:48s} {statistics.median(v):10,.0f} events/s")
        r = redis.Redis.from_url(url)
        delete_matching(r, f"{prefix}:*")
        r.close()
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
