"""What a 3-master Redis Cluster costs against one Redis, same machine, same run (overhead, not capacity:
every node shares these 2 cores): publish, publish_many across symbols, and the end-to-end drain of a log
route (the state projection, one Drainer per symbol) over what was published.

    python bench/bench_cluster.py [--n 2000] [--batch 100] [--rounds 3]

Starts its own servers on loopback: one redis-server (the baseline) and a 3-master Cluster (three
redis-servers, slots split by redis-cli), each with the same options. The two topologies alternate round
by round, so load on the shared machine hits them alike; prints events/s (median of the rounds) and the
ratio to one Redis. The bus on the Cluster is ``redis+cluster://`` from settings, as a user builds it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bus import RedisEventBus, TradeEvent  # noqa: E402
from bus.config import Settings  # noqa: E402
from bus.dispatch.dispatcher import Dispatcher  # noqa: E402
from bus.dispatch.logroutes.config import LogRouteConfig  # noqa: E402
from bus.dispatch.logroutes.drain import DONE, Drainer  # noqa: E402
from bus.dispatch.logroutes.effects import effect_for  # noqa: E402
from bus.dispatch.routing import RoutingTable  # noqa: E402
from bus.embedded import EmbeddedRedis  # noqa: E402
from tests.topology_servers import ClusterSet  # noqa: E402

SYMBOLS = ("XAUUSD", "EURUSD", "BTCUSD", "US500", "GBPJPY", "USDJPY")
DRAIN = LogRouteConfig(batch=100, time_budget=600.0)


def make_events(n: int, tag: str) -> list[TradeEvent]:
    return [TradeEvent.create_order_created(SYMBOLS[i % len(SYMBOLS)], f"{tag}{i}", "BUY", 2000.5, 0.1)
            for i in range(n)]  # fmt: skip


def bus_on(url: str, broker: str) -> RedisEventBus:
    """A bus whose default routes (state and risk: log routes) set their wake flags as users' buses do;
    wake-ups go to a separate broker nobody consumes (the bench drains in-process)."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    s = Settings(redis_url=url, celery_broker_url=broker, key_prefix=prefix, broker_key_prefix=f"{prefix}:")
    return RedisEventBus(settings=s, dispatcher=Dispatcher.from_settings(s, log_routes=DRAIN))


def drain_all(bus: RedisEventBus) -> int:
    state = RoutingTable.default().get("state")
    assert state is not None
    applied = 0
    for symbol in SYMBOLS:
        out = Drainer(bus.client, bus.keys, state, symbol, effect_for(state), config=DRAIN).run()
        assert out.status == DONE, out
        applied += out.acked
    return applied


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    cluster = ClusterSet().start()
    try:
        with EmbeddedRedis() as single, EmbeddedRedis() as broker:
            topologies = {"one Redis": single.url, "3-master Cluster": cluster.url}
            measures: dict[str, Callable[[RedisEventBus, list[TradeEvent]], None]] = {
                "publish()": lambda bus, events: [bus.publish(e) for e in events] and None,
                f"publish_many({a.batch}), {len(SYMBOLS)} symbols": lambda bus, events: (
                    [bus.publish_many(events[i : i + a.batch]) for i in range(0, len(events), a.batch)] and None
                ),
            }
            rates: dict[tuple[str, str], list[float]] = {}
            for r in range(a.rounds):
                for topo, url in topologies.items():
                    bus = bus_on(url, broker.url)
                    published = 0
                    for name, fn in measures.items():
                        events = make_events(a.n, f"{r}-{name[:8]}-")
                        t0 = time.perf_counter()
                        fn(bus, events)
                        rates.setdefault((name, topo), []).append(a.n / (time.perf_counter() - t0))
                        published += a.n
                    t0 = time.perf_counter()  # the state route's drain of everything just published
                    assert drain_all(bus) == published
                    rates.setdefault(("drain (state log route)", topo), []).append(
                        published / (time.perf_counter() - t0)
                    )
                    bus.close()
            for name in [*measures, "drain (state log route)"]:
                base = statistics.median(rates[(name, "one Redis")])
                for topo in topologies:
                    med = statistics.median(rates[(name, topo)])
                    print(f"{name:32s} {topo:18s} {med:9,.0f} ev/s  {med / base:.2f}x")
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
