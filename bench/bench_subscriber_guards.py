"""The subscriber's per-broadcast decision (bus/core/healing.py) before/after the issue 9 guards, in one run.

    python bench/bench_subscriber_guards.py --compare-with DIR [--n 20000] [--rounds 7]

Times ``Healer.arrival`` + ``Healer.delivered`` (what the listener runs per broadcast, minus the socket
read and the handlers) on DIR's code (main before the change) and this tree's, alternately, in
subprocesses: a chain of the bus's own broadcasts (the normal path: every field validated, no log
read) and another key prefix's broadcasts (what a ``trades:*`` subscriber mostly sees on a shared
server). Best of ``--rounds`` per tree, in microseconds per broadcast (CPU bound: read the ratio).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

LOOP = """
import inspect, sys, time
sys.path.insert(0, sys.argv[1])
import bus
assert bus.__file__.startswith(sys.argv[1]), bus.__file__
import orjson
from bus import TradeEvent
from bus.core.healing import Healer
from bus.core.keys import Keys
from bus.core.subscription import Counters, Subscription
from bus.core.wire import BROADCAST_META
n = int(sys.argv[2])
event = orjson.loads(TradeEvent.create_order_created("XAUUSD", "o1", "BUY", 2000.5, 0.1, sl=1995.0).encode())
chan = b"trades:XAUUSD:order.created"
def broadcasts(prefix):
    out, prev = [], ""
    for i in range(n):
        lid = f"1000000000000-{i + 1}"
        meta = {"log_id": lid, "n": i + 1, "prev": prev, "prev_t": prev, "bus": prefix}
        out.append(orjson.dumps({**{k: v for k, v in meta.items() if k in BROADCAST_META}, **event}))
        prev = lid
    return out
def timed(data):
    h = Healer(Keys("tradebus"), Counters())
    sub = Subscription("trades:XAUUSD:*", True, "XAUUSD", None)
    sub.baseline = (999999999999, 0)
    args = (lambda d: (sub, chan, d)) if len(inspect.signature(h.arrival).parameters) == 3 else (lambda d: (sub, d))
    t0 = time.process_time()
    for d in data:
        a = h.arrival(*args(d))
        if a is not None:
            h.delivered(sub, a)
    return (time.process_time() - t0) / len(data) * 1e6, h.counters
own, other = broadcasts("tradebus"), broadcasts("othertenant")
t_own, c = timed(own)
assert c.foreign == 0 and c.malformed == 0, c
t_other, c = timed(other)
assert c.foreign == n, c
print(t_own, t_other)
"""


def measure(tree: str, n: int) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEBUS_", "REDIS_"))}
    out = subprocess.run([sys.executable, "-c", LOOP, tree, str(n)], env=env, cwd=tree, capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    return float(out[0]), float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compare-with", metavar="DIR", required=True, help="a tree of main (before the change)")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    here = str(Path(__file__).resolve().parent.parent)
    rows: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    for i in range(a.rounds):
        for label, tree in (("before", a.compare_with), ("after", here))[:: 1 if i % 2 == 0 else -1]:
            rows[label].append(measure(tree, a.n))
    for label, r in rows.items():
        own, other = [o for o, _ in r], [f for _, f in r]
        print(f"{label:6}: own broadcast best {min(own):.2f} us (median {statistics.median(own):.2f}), "
              f"another prefix's best {min(other):.2f} us (median {statistics.median(other):.2f})")  # fmt: skip
    b, f = min(o for o, _ in rows["before"]), min(o for o, _ in rows["after"])
    print(f"own broadcast, after / before = {f / b:.3f}")
    b, f = min(o for _, o in rows["before"]), min(o for _, o in rows["after"])
    print(f"another prefix's broadcast, after / before = {f / b:.3f}")


if __name__ == "__main__":
    main()
