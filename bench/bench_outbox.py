"""The executor's publish path: through its outbox (numbered, each logged once) beside bus.publish.

    python bench/bench_outbox.py [--url redis://...] [--n 2000] [--runs 3]

Without --url it starts its own redis-server (bus.embedded). Same run, interleaved rounds:
* publish with Redis up: ``bus.publish`` (what the outbox called before) vs ``OutboxPublisher.publish``
  (publish_sequenced.lua), without a dispatcher and with the broker on the bus's server (2 routes);
* flushing ``--n`` queued events: the loop the outbox ran before (publish, then delete the row, one
  event at a time) vs ``OutboxPublisher.flush`` (100 per round trip, one sqlite commit per batch).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bus.config import LoadEnvironmentVariables
from bus.core.bus import RedisEventBus
from bus.core.keyspace import delete_matching
from bus.dispatch.factory import EventBusFactory
from bus.embedded import EmbeddedRedis
from bus.events.model import TradeEvent
from bus.executor.outbox import Outbox, OutboxPublisher


def make_events(n: int) -> list[TradeEvent]:
    return [TradeEvent.create_order_created("XAUUSD", str(i), "BUY", 2000.5, 0.1, sl=1995.0) for i in range(n)]


def timed(fn: Callable[..., object], n: int, *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return n / (time.perf_counter() - t0)


def publish_each(publisher: RedisEventBus | OutboxPublisher, events: list[TradeEvent]) -> None:
    for e in events:
        publisher.publish(e)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    server = None if a.url else EmbeddedRedis().start()
    url = a.url or server.url  # type: ignore[union-attr]
    broker_url = url.rsplit("/", 1)[0] + "/1"
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="bench-outbox-"))
    dispatching = LoadEnvironmentVariables(
        None, redis_url=url, celery_broker_url=broker_url, key_prefix=f"{prefix}-d", broker_key_prefix=f"{prefix}-d:"
    )
    buses = {
        "no dispatcher": RedisEventBus(url, key_prefix=prefix),
        "broker on the bus's server": EventBusFactory.create_from_env(dispatching),
    }
    samples: dict[str, list[float]] = {}

    def sample(name: str, fn: Callable[..., object], *args: Any) -> None:
        samples.setdefault(name, []).append(timed(fn, a.n, *args))

    try:
        for run in range(a.runs):  # interleaved rounds, so load changes hit every path alike
            for label, bus in buses.items():
                sample(f"bus.publish, {label}", publish_each, bus, make_events(a.n))
                outbox = OutboxPublisher(bus, Outbox(work / f"direct-{run}-{label}.db"), source="bench")
                sample(f"OutboxPublisher.publish, {label}", publish_each, outbox, make_events(a.n))
                outbox.close()
            bus = buses["broker on the bus's server"]
            for name, flush in (("flush before: publish + delete per event", old_flush),
                                ("OutboxPublisher.flush", new_flush)):  # fmt: skip
                box = Outbox(work / f"queued-{run}-{len(name)}.db")
                for e in make_events(a.n):
                    box.append(e)
                sample(f"{name}, {a.n} queued", flush, bus, box)
                box.close()
        for name, values in samples.items():
            print(f"{name:60s} {statistics.median(values):10,.0f} events/s")
    finally:
        for bus in buses.values():
            delete_matching(bus.client, f"{prefix}*")
            bus.close()
        broker = redis.Redis.from_url(broker_url)
        delete_matching(broker, f"{prefix}*")
        broker.close()
        if server is not None:
            server.close()


def old_flush(bus: RedisEventBus, box: Outbox) -> None:
    while len(box):
        for seq, event in box.peek(100):
            bus.publish(event)
            box.remove(seq)


def new_flush(bus: RedisEventBus, box: Outbox) -> None:
    OutboxPublisher(bus, box, source="bench").flush()


if __name__ == "__main__":
    main()
