"""The cost of numbering log entries (issue 9 item 7): publish.lua with and without the entry number `n`.

    python bench/bench_entry_numbers.py --before DIR [--n 20000] [--rounds 6] [--compare-with DIR]

Both script bodies run on one private redis-server (no other load on it), alternately, round after
round, in one run: ``--before`` is a tree of main (its bus/core Lua files: the preludes, then publish.lua).
Each round EVALSHAs --n events (pipelines of 100, one symbol, no routes) and
reads the server's own time per call (INFO commandstats, usec_per_call of evalsha): that is where the
change costs, and it is not disturbed by the client's scheduling on a loaded box. Wall-clock events/s
are printed beside it. ``--instructions N`` also counts redis-server's instructions per call of each
script (valgrind callgrind, N calls after a warm-up): deterministic where time on a loaded box is not.
With ``--compare-with DIR`` (a tree of main), ``RedisEventBus.publish()``
end to end (no routes) is also measured on DIR's code and this tree's, alternately, on the same server.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import redis
from bench_memory import CallgrindServer

from bus import TradeEvent
from bus.embedded import EmbeddedRedis, redis_server_binary


def publish_body(core: Path) -> str:
    """publish.lua as a tree loads it: its shared Lua files first (wake.lua, log_event.lua where it has one)."""
    parts = [core / "wake.lua", core / "log_event.lua", core / "publish.lua"]
    return "".join(p.read_text() for p in parts if p.exists())


def run_round(client: redis.Redis, body: str, n: int, payload: bytes, prefix: str) -> tuple[float, float]:
    sha = client.script_load(body)
    assert sha == hashlib.sha1(body.encode()).hexdigest()
    keys = [f"{prefix}:{{B}}:log", f"{prefix}:{{B}}:heads", f"{prefix}:{{B}}:pending"]
    args = [payload, "trades:B:order.created", "order.created", 100_000, "0", 0, prefix]
    client.config_resetstat()
    t0 = time.perf_counter()
    for start in range(0, n, 100):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(100, n - start)):
            pipe.evalsha(sha, len(keys), *keys, *args)
        pipe.execute()
    wall = time.perf_counter() - t0
    stats = client.info("commandstats")["cmdstat_evalsha"]
    client.delete(*keys)
    return stats["usec_per_call"], n / wall


def server_instructions(bodies: dict[str, str], n: int, payload: bytes) -> dict[str, float]:
    """redis-server instructions per EVALSHA of each script body (``n`` calls each, after 400 to warm up)."""
    with CallgrindServer(redis_server_binary()) as server:
        result = {}
        for label, body in bodies.items():
            run_round(server.client, body, 400, payload, f"warm-{label}")
            server.zero()
            run_round(server.client, body, n, payload, f"cg-{label}")
            result[label] = server.dump() / n
        return result


PUBLISH_LOOP = """
import sys, time, uuid
sys.path.insert(0, sys.argv[1])
import bus
from bus import RedisEventBus, TradeEvent
assert bus.__file__.startswith(sys.argv[1]), bus.__file__  # this tree's code, not the installed one
n = int(sys.argv[3])
events = [TradeEvent.create_order_created("B", str(i), "BUY", 2000.5, 0.1, sl=1995.0) for i in range(n)]
with RedisEventBus(sys.argv[2], key_prefix="e2e" + uuid.uuid4().hex[:6]) as bus:
    for e in events[:200]:
        bus.publish(e)
    t0, c0 = time.perf_counter(), time.process_time()
    for e in events:
        bus.publish(e)
    print(n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6)
"""


def publish_end_to_end(tree: str, url: str, n: int) -> tuple[float, float]:
    """``publish()`` events/s and client CPU us per event, on ``tree``'s code (a subprocess)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEBUS_", "REDIS_", "CELERY_"))}
    out = subprocess.run([sys.executable, "-c", PUBLISH_LOOP, tree, url, str(n)], env=env, cwd=tree,
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    return float(out[0]), float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, required=True, help="a tree of main (before the change)")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--instructions", type=int, default=0, metavar="N", help="count server instructions over N calls")
    ap.add_argument("--compare-with", metavar="DIR", help="also publish() end to end on DIR's code and this tree's")
    a = ap.parse_args()
    after = publish_body(Path(str(resources.files("bus.core"))))
    before = publish_body(a.before / "bus" / "core")
    assert "'n', n" in after and "'n', n" not in before
    payload = TradeEvent.create_order_created("B", "o1", "BUY", 2000.5, 0.1, sl=1995.0).encode()
    results: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    with EmbeddedRedis() as server:
        client = server.client()
        for i in range(a.rounds):
            for label, body in (
                (("before", before), ("after", after)) if i % 2 == 0 else (("after", after), ("before", before))
            ):
                results[label].append(run_round(client, body, a.n, payload, f"bench{i}"))
        client.close()
        e2e: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
        if a.compare_with:
            here = str(Path(__file__).resolve().parent.parent)
            for i in range(a.rounds):
                for label, tree in (("before", a.compare_with), ("after", here))[:: 1 if i % 2 == 0 else -1]:
                    e2e[label].append(publish_end_to_end(tree, server.url, a.n // 4))
    for label, rows in results.items():
        usec = [u for u, _ in rows]
        eps = [e for _, e in rows]
        each = ", ".join(f"{u:.2f}" for u in usec)
        print(f"{label:6}: server us/call median {statistics.median(usec):.2f} (rounds {each})"
              f" | wall ev/s median {statistics.median(eps):,.0f}")  # fmt: skip
    b = statistics.median(u for u, _ in results["before"])
    f = statistics.median(u for u, _ in results["after"])
    print(f"numbering costs {f - b:+.2f} us of server time per publish script ({(f / b - 1) * 100:+.1f}%)")
    for label, rows in e2e.items():
        if rows:
            eps, cpu = [e for e, _ in rows], [c for _, c in rows]
            each = ", ".join(f"{e:,.0f}" for e in eps)
            print(f"publish() end to end, {label:6}: median {statistics.median(eps):,.0f} ev/s "
                  f"(rounds {each}), client CPU {statistics.median(cpu):.0f} us/event")  # fmt: skip
    if a.instructions:
        ins = server_instructions({"before": before, "after": after}, a.instructions, payload)
        print(f"redis-server instructions per publish script (valgrind): before {ins['before']:,.0f}, "
              f"after {ins['after']:,.0f} ({ins['after'] / ins['before']:.3f}x)")  # fmt: skip
    if e2e["before"]:
        r = statistics.median(e for e, _ in e2e["after"]) / statistics.median(e for e, _ in e2e["before"])
        print(f"publish() end to end: after / before = {r:.3f}")


if __name__ == "__main__":
    main()
