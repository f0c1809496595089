"""publish / publish_many beside bare redis-py issuing the same commands with the same payload.

    python bench/bench_publish.py [--url redis://...] [--n 5000] [--batch 100] [--runs 3]

Without --url it starts its own redis-server (bus.embedded), so nothing else shares it. Every path
writes the same pre-encoded ~310-byte event to a stream (XADD MAXLEN ~) and PUBLISHes it.
Prints events/s (median of --runs) and the ratio bare/ours for each pair, all in one run. Two extra
publish_many paths: the pre-batching one (``publish_run_max = 1``: one publish.lua call per event) and
a batch alternating two symbols (every same-symbol run is one event: the worst case for batching).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import redis

from bus import RedisEventBus, TradeEvent
from bus.core.keyspace import delete_matching
from bus.embedded import EmbeddedRedis

MAXLEN = 100_000


def make_events(n: int) -> list[TradeEvent]:
    return [TradeEvent.create_order_created(symbol="XAUUSD", order_id=str(i), order_type="BUY", price=2000.50,
                                            volume=0.1, sl=1995.0, tp=2010.0) for i in range(n)]  # fmt: skip


def rate(fn, n: int, runs: int) -> float:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(n / (time.perf_counter() - t0))
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    server = None if a.url else EmbeddedRedis().start()
    url = a.url or server.url  # type: ignore[union-attr]
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        bus = RedisEventBus(url, key_prefix=prefix, log_maxlen=MAXLEN)
        # the pre-batching publish_many: one publish.lua call per event of the pipeline
        per_event = RedisEventBus(url, key_prefix=f"{prefix}-pe", log_maxlen=MAXLEN)
        per_event.publish_run_max = 1
        r = redis.Redis.from_url(url)
        events = make_events(a.n)
        payloads = [e.encode() for e in events]
        log_key, chan = f"{prefix}:bare:{{XAUUSD}}:log", "trades:XAUUSD:order.created"
        bus.publish(events[0])  # warm up: script loaded, symbol registered
        per_event.publish(events[0])

        def bare_pipeline_each():  # the 2 commands, 1 round trip per event
            for p in payloads:
                pipe = r.pipeline(transaction=False)
                pipe.xadd(log_key, {"type": "order.created", "event": p}, maxlen=MAXLEN, approximate=True)
                pipe.publish(chan, p)
                pipe.execute()

        def bare_multi_each():  # the same, atomic (MULTI/EXEC)
            for p in payloads:
                pipe = r.pipeline(transaction=True)
                pipe.xadd(log_key, {"type": "order.created", "event": p}, maxlen=MAXLEN, approximate=True)
                pipe.publish(chan, p)
                pipe.execute()

        def ours_each():
            for e in events:
                bus.publish(e)

        def bare_batches():
            for i in range(0, a.n, a.batch):
                pipe = r.pipeline(transaction=False)
                for p in payloads[i : i + a.batch]:
                    pipe.xadd(
                        log_key,
                        {"type": "order.created", "event": p},
                        maxlen=MAXLEN,
                        approximate=True,
                    )
                    pipe.publish(chan, p)
                pipe.execute()

        def ours_batches():
            for i in range(0, a.n, a.batch):
                bus.publish_many(events[i : i + a.batch])

        def per_event_batches():
            for i in range(0, a.n, a.batch):
                per_event.publish_many(events[i : i + a.batch])

        def ours_mixed():  # two symbols alternating: every run is one event (the worst case)
            for i in range(0, a.n, a.batch):
                bus.publish_many(mixed[i : i + a.batch])

        mixed = [TradeEvent.from_dict({**e.to_dict(), "symbol": "EURUSD"}) if i % 2 else e
                 for i, e in enumerate(events)]  # fmt: skip
        paths = [("bare pipeline XADD+PUBLISH, per event", bare_pipeline_each),
                 ("bare MULTI XADD+PUBLISH, per event", bare_multi_each),
                 ("bus.publish", ours_each),
                 (f"bare pipeline, {a.batch} events", bare_batches),
                 (f"bus.publish_many, {a.batch} events", ours_batches),
                 ("publish_many, 1 script per event (before)", per_event_batches),
                 ("publish_many, 2 symbols alternating", ours_mixed)]  # fmt: skip
        samples: dict[str, list[float]] = {name: [] for name, _ in paths}
        for _ in range(a.runs):  # interleaved rounds, so load changes hit every path alike
            for name, fn in paths:
                samples[name].append(rate(fn, a.n, 1))
        results = {name: statistics.median(v) for name, v in samples.items()}
        for name, value in results.items():
            print(f"{name:45s} {value:10,.0f} events/s")
        keys = list(results)
        print(
            f"publish: bare pipeline / bus = {results[keys[0]] / results[keys[2]]:.2f}x "
            f"(bare MULTI / bus = {results[keys[1]] / results[keys[2]]:.2f}x)"
        )
        print(f"publish_many: bare pipeline / bus = {results[keys[3]] / results[keys[4]]:.2f}x "
              f"(1 script per event, before: {results[keys[3]] / results[keys[5]]:.2f}x; "
              f"2 symbols alternating: {results[keys[3]] / results[keys[6]]:.2f}x)")  # fmt: skip
        bus.close()
        per_event.close()
        delete_matching(r, f"{prefix}*")
        r.close()
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
