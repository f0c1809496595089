"""What durability costs: publish / publish_many / an outbox's sequenced publish (batches, as its flush
sends them) on a master with one replica, without and with TRADEBUS_PUBLISH_REPLICAS=1 (WAIT 1 in the
publish's pipeline), in the same run.

    python bench/bench_topology.py [--n 3000] [--batch 100] [--rounds 5]

Starts its own master and replica (bus.embedded, loopback), so nothing else shares them. The paths
alternate round by round so load on the shared machine hits them alike; prints events/s (median of
the rounds) and the ratio to the no-WAIT baseline of the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable

from bus import RedisEventBus, TradeEvent
from bus.config import Settings
from bus.core.sequenced import SequencedPublisher
from bus.embedded import EmbeddedRedis

MAXLEN = 100_000


def make_events(n: int, tag: str) -> list[TradeEvent]:
    return [TradeEvent.create_order_created(symbol="XAUUSD", order_id=f"{tag}{i}", order_type="BUY", price=2000.5,
                                            volume=0.1) for i in range(n)]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    with EmbeddedRedis() as master, EmbeddedRedis(extra_args=("--replicaof", "127.0.0.1", str(master.port))):
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        plain = RedisEventBus(master.url, key_prefix=prefix, log_maxlen=MAXLEN)
        durable = RedisEventBus(master.url, key_prefix=prefix, log_maxlen=MAXLEN,
                                settings=Settings(publish_replicas=1, publish_replicas_timeout_ms=5000))  # fmt: skip
        assert durable.client.execute_command("WAIT", 1, 5000) == 1, "the replica did not connect"

        def one_by_one(bus: RedisEventBus) -> Callable[[list[TradeEvent]], None]:
            def run(events: list[TradeEvent]) -> None:
                for e in events:
                    bus.publish(e)

            return run

        def batched(bus: RedisEventBus) -> Callable[[list[TradeEvent]], None]:
            def run(events: list[TradeEvent]) -> None:
                for i in range(0, len(events), a.batch):
                    bus.publish_many(events[i : i + a.batch])

            return run

        def sequenced(bus: RedisEventBus) -> Callable[[list[TradeEvent]], None]:
            outbox = SequencedPublisher(bus.publisher, "bench", uuid.uuid4().hex)
            seq = iter(range(1, 10**9))

            def run(events: list[TradeEvent]) -> None:
                for i in range(0, len(events), a.batch):
                    outbox.publish([(next(seq), e) for e in events[i : i + a.batch]])

            return run

        paths = {
            "publish(), no WAIT (baseline)": one_by_one(plain),
            "publish(), WAIT 1": one_by_one(durable),
            f"publish_many({a.batch}), no WAIT (baseline)": batched(plain),
            f"publish_many({a.batch}), WAIT 1": batched(durable),
            f"sequenced({a.batch}), no WAIT (baseline)": sequenced(plain),
            f"sequenced({a.batch}), WAIT 1": sequenced(durable),
        }
        rates: dict[str, list[float]] = {name: [] for name in paths}
        for r in range(a.rounds):
            for name, fn in paths.items():
                events = make_events(a.n, f"{r}-{len(rates[name])}-")
                t0 = time.perf_counter()
                fn(events)
                rates[name].append(a.n / (time.perf_counter() - t0))
        names = list(paths)
        for k, name in enumerate(names):
            base = names[k - k % 2]  # each path's no-WAIT baseline is the path before it
            med = statistics.median(rates[name])
            print(f"{name:45s} {med:9,.0f} ev/s  {med / statistics.median(rates[base]):.2f}x")
        plain.close()
        durable.close()


if __name__ == "__main__":
    main()
