"""Build + serialise one event with a helper, beside a plain dict + json.dumps of the same fields.

    python bench/bench_events.py [--n 50000] [--cpu-time]
    python bench/bench_events.py --compare-with DIR   # DIR: another tradebus tree, e.g. a worktree of main

Prints microseconds per event for each path, measured in the same process, and their ratios. With
--compare-with, the same measurements run for DIR ("before") and this tree ("after"), alternately, three
times, in CPU time (the least disturbed by other processes on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import timeit
import uuid
from datetime import UTC, datetime

import orjson

from bus import TradeEvent
from bus.core.wire import decode_entry


def helper_encode() -> bytes:
    return TradeEvent.create_order_created(
        symbol="XAUUSD", order_id="12345", order_type="BUY", price=2000.50, volume=0.1, sl=1995.0, tp=2010.0
    ).encode()


def plain_fields() -> dict:
    """The same envelope as a plain dict (fresh id and timestamp each time, as a helper makes)."""
    return {
        "event_id": uuid.uuid4().hex,
        "event_type": "order.created",
        "symbol": "XAUUSD",
        "timestamp": datetime.now(UTC).isoformat(),
        "data": {"order_id": "12345", "order_type": "BUY", "price": 2000.50, "volume": 0.1, "sl": 1995.0, "tp": 2010.0},
        "correlation_id": None,
        "causation_id": None,
        "source": None,
        "schema_version": 1,
    }


def plain_json() -> str:
    return json.dumps(plain_fields())


def plain_orjson() -> bytes:
    return orjson.dumps(plain_fields())


RAW = helper_encode()


def decode() -> TradeEvent:
    return TradeEvent.from_json(RAW)


ENTRY = {b"type": b"order.created", b"event": RAW}


def trusted_decode() -> TradeEvent | None:
    """What the subscriber and log readers do with an event this bus wrote (log entry or broadcast)."""
    return decode_entry(ENTRY)


def plain_decode() -> dict:
    return json.loads(RAW)


def per_call_us(fn, n: int, repeat: int = 5) -> float:
    return statistics.median(timeit.repeat(fn, number=n, repeat=repeat)) / n * 1e6


def cpu_us(fn, n: int) -> float:
    """Best of 40 short runs in process CPU time: preemption by other processes does not count."""
    batch = max(n // 40, 100)
    return min(timeit.repeat(fn, number=batch, repeat=40, timer=time.process_time)) / batch * 1e6


def compare(other: str, n: int) -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for i in range(1, 4):
        for label, tree in (("before", other), ("after", here)):
            env = {**os.environ, "PYTHONPATH": tree}
            out = subprocess.run([sys.executable, __file__, "--n", str(n), "--cpu-time"], env=env, cwd=tree,
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            print(f"== {label} ({tree}), round {i}\n{out}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--cpu-time", action="store_true", help="best-of CPU time instead of median wall time")
    parser.add_argument("--compare-with", metavar="DIR", help="measure another tradebus tree too, alternately")
    args = parser.parse_args()
    n = args.n
    if args.compare_with:
        compare(args.compare_with, n)
        return
    measure = cpu_us if args.cpu_time else per_call_us
    rows = [
        ("dict + json.dumps (baseline)", measure(plain_json, n)),
        ("dict + orjson.dumps", measure(plain_orjson, n)),
        ("TradeEvent.create_order_created().encode()", measure(helper_encode, n)),
        ("json.loads (baseline)", measure(plain_decode, n)),
        ("TradeEvent.from_json()", measure(decode, n)),
        ("trusted decode of a log entry (decode_entry)", measure(trusted_decode, n)),
    ]
    base_enc, base_dec = rows[0][1], rows[3][1]
    print(f"{'path':48} {'µs/event':>9} {'vs baseline':>12}")
    for name, us in rows:
        base = base_dec if "loads" in name or "decode" in name or "from_json" in name else base_enc
        print(f"{name:48} {us:9.2f} {us / base:11.2f}x")


if __name__ == "__main__":
    main()
