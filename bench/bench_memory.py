"""State projection: Redis memory per event and apply throughput, this layout beside the old one.

    python bench/bench_memory.py [--events 100000] [--runs 5] [--baseline 1a0c130]

Each layout projects the same complete trades (order created + filled, position opened + closed: 4
events each) on its own fresh redis-server (bus.embedded), in pipelines of 1,000 as rebuild does:

* old: ``state.py`` and ``state.lua`` of the ``--baseline`` commit (``git show``), run as they were
  (per-entity SET of applied event ids, nothing expires);
* new, retention 0 (keep forever) and new, retention 7 days;
* new, retention 1 s, measured again once it has passed (what stays for good).

Memory: INFO used_memory before/after (the whole server, allocator overhead included) and the exact
MEMORY USAGE of the keys w/o TTL without a TTL, per event. Throughput: old vs new script in interleaved
rounds on one server, pipelined (100 per round trip: the server's cost per event shows) and one event
per round trip (the state task's shape); events/s, median of ``--runs``.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

from bus.core import state
from bus.core.keys import Keys
from bus.core.keyspace import delete_matching
from bus.core.scripts import execute_pipeline
from bus.embedded import EmbeddedRedis
from bus.events.model import TradeEvent

REPO = Path(__file__).resolve().parent.parent
SYMBOL = "XAUUSD"
WEEK = 7 * 24 * 3600


class OldKeys(Keys):
    """Keys with the name the old layout used for its per-entity applied-id sets."""

    def applied(self, symbol: str, kind: str, entity_id: str) -> str:
        return f"{self._sym(symbol)}:applied:{kind}:{entity_id}"


def old_projection(commit: str) -> ModuleType:
    """bus/core/state.py and state.lua as they were at ``commit``: the old layout, Python side included."""

    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, check=True, capture_output=True,
                              text=True).stdout  # fmt: skip

    module = ModuleType(f"state_at_{commit}")
    module.__package__ = "bus.core"
    exec(compile(show("bus/core/state.py"), module.__name__, "exec"), module.__dict__)  # noqa: S102
    script = module.SCRIPT
    script.body = show("bus/core/state.lua")
    script.sha = hashlib.sha1(script.body.encode()).hexdigest()
    return module


def trades(n_events: int) -> list[TradeEvent]:
    out: list[TradeEvent] = []
    for n in range(n_events // 4):
        o, p = f"o{n}", f"p{n}"
        out += [
            TradeEvent.create_order_created(SYMBOL, o, "BUY", 2000.5, 0.1, sl=1995.0, tp=2010.0),
            TradeEvent.create_order_filled(SYMBOL, o, 2000.4, 0.1),
            TradeEvent.create_position_opened(SYMBOL, p, 2000.4, 0.1, "LONG", sl=1995.0),
            TradeEvent.create_position_closed(SYMBOL, p, 2001.0, 0.06),
        ]
    return out


def project(client: redis.Redis, keys: Keys, events: list[TradeEvent], layout: Any, batch: int) -> None:
    """Apply ``events`` with ``layout``: the old projection module, or a retention (s) for this one."""
    old = isinstance(layout, ModuleType)
    scripts = (layout.SCRIPT,) if old else (state.SCRIPT,)
    for i in range(0, len(events), batch):
        pipe = client.pipeline(transaction=False)
        for e in events[i : i + batch]:
            if old:
                layout.stage_apply(pipe, keys, e)
            else:
                state.stage_apply(pipe, keys, e, retention=layout)
        for r in execute_pipeline(pipe, scripts):
            if isinstance(r, Exception):
                raise r


def never_expiring_bytes(client: redis.Redis) -> tuple[int, int]:
    """(keys, exact bytes) of the keys without a TTL. SCAN also drops keys whose TTL has passed."""
    names = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for k in names:
        pipe.pttl(k)
        pipe.memory_usage(k, samples=0)
    replies = pipe.execute()
    sizes = [int(size or 0) for ttl, size in zip(replies[::2], replies[1::2], strict=True) if ttl == -1]
    return len(sizes), sum(sizes)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])  # type: ignore[index]


def memory_row(events: list[TradeEvent], layout: Any, wait_out: float = 0.0) -> tuple[float, float, int]:
    """(used_memory delta per event, never-expiring bytes per event, keys) on a fresh server."""
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        before = used_memory(client)
        project(client, OldKeys("bench"), events, layout, 1_000)
        if wait_out:
            time.sleep(wait_out)  # a bench, not a test: let the 1 s retention pass
        keys, persistent = never_expiring_bytes(client)
        delta = used_memory(client) - before
        client.close()
    return delta / len(events), persistent / len(events), keys


def rate(fn: Any, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--throughput-events", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline", default="1a0c130", help="commit whose state.lua is the old layout")
    a = ap.parse_args()
    old = old_projection(a.baseline)
    events = trades(a.events)
    print(f"memory after {len(events):,} events ({len(events) // 4:,} complete trades), fresh server each:")
    print(f"{'layout':42s} {'used_memory/event':>18s} {'never expire/event':>19s} {'keys w/o TTL':>10s}")
    for name, layout, wait_out in [
        (f"old ({a.baseline}: applied-id sets)", old, 0.0),
        ("new, retention 0 (keep forever)", 0, 0.0),
        ("new, retention 7 days", WEEK, 0.0),
        ("new, retention 1 s, after it passed", 1, 1.5),
    ]:
        delta, persistent, keys = memory_row(events, layout, wait_out)
        print(f"{name:42s} {delta:16,.1f} B {persistent:17,.1f} B {keys:10,}")

    sample = events[: a.throughput_events]
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        paths: list[tuple[str, Any, int]] = [
            ("old, 100 per round trip", old, 100),
            ("new, 100 per round trip", WEEK, 100),
            ("old, 1 per round trip", old, 1),
            ("new, 1 per round trip", WEEK, 1),
        ]
        samples: dict[str, list[float]] = {name: [] for name, _, _ in paths}
        for _ in range(a.runs):  # interleaved rounds, so load changes hit every path alike
            for name, layout, batch in paths:
                keys = OldKeys(f"tp-{uuid.uuid4().hex[:8]}")
                samples[name].append(rate(lambda: project(client, keys, sample, layout, batch), len(sample)))  # noqa: B023
                delete_matching(client, f"{keys.prefix}:*")
        client.close()
    medians = {name: statistics.median(v) for name, v in samples.items()}
    print(f"\nstate apply throughput, {len(sample):,} events, median of {a.runs} interleaved rounds:")
    for name, value in medians.items():
        print(f"{name:42s} {value:10,.0f} events/s")
    for shape in ("100 per round trip", "1 per round trip"):
        ratio = medians[f"new, {shape}"] / medians[f"old, {shape}"]
        print(f"new / old, {shape}: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
