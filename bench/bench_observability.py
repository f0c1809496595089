"""The cost of observability on publish(): all off, metrics on, tracing on, alternately, in the same run.

    python bench/bench_observability.py [--n 3000] [--rounds 5]

Each round publishes --n events (log + broadcast, no dispatcher: the cheapest publish, so the hooks'
fixed cost shows most) once per mode, modes alternating so drift on the shared machine hits both alike.
Prints the median microseconds per publish of each mode and the ratio to "off", and the recording's own
cost (timed alone, so the shared machine's noise does not drown it).

Uses REDIS_URL (default redis://127.0.0.1:6379/9), a fresh key prefix, and deletes its keys afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus.core.bus import RedisEventBus  # noqa: E402
from bus.events.model import TradeEvent  # noqa: E402
from bus.observability import metrics, tracing  # noqa: E402


def _round(bus: RedisEventBus, events: list[TradeEvent]) -> float:
    started = time.perf_counter()
    for e in events:
        bus.publish(e)
    return (time.perf_counter() - started) / len(events) * 1e6


def _all_off() -> None:
    metrics.disable_metrics()
    tracing.set_tracer_provider(None)


def _tracing_on() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    _all_off()
    tracing.set_tracer_provider(TracerProvider())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    prefix = f"bench-obs-{uuid.uuid4().hex[:8]}"
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9")
    modes: dict[str, Callable[[], object]] = {
        "all off": _all_off,
        "metrics on": metrics.enable_metrics,
        "tracing on": _tracing_on,  # the SDK with no exporter: the spans' own cost
    }
    timings: dict[str, list[float]] = {m: [] for m in modes}
    with RedisEventBus(url, key_prefix=prefix) as bus:
        events = [TradeEvent.create_trade_failed("BENCH", f"e{i}") for i in range(a.n)]
        _round(bus, events[:200])  # warm-up: scripts loaded, symbol registered
        for _ in range(a.rounds):
            for mode, switch in modes.items():
                switch()
                timings[mode].append(_round(bus, events))
        _all_off()
        keys = list(bus.client.scan_iter(f"{prefix}:*"))
        if keys:
            bus.client.delete(*keys)
    recorder = metrics.enable_metrics()
    n = 20000
    started = time.perf_counter()
    for _ in range(n):
        recorder.record_publish(["trade.failed"], 0.0002, ("state",), ())
    print(f"the recording alone: {(time.perf_counter() - started) / n * 1e6:.2f} us per publish")
    metrics.disable_metrics()
    started = time.perf_counter()
    for _ in range(n):
        tracing.active_tracer()
    # opentelemetry is imported by now (the "tracing on" rounds): the check's dearer case
    print(f"the no-tracer check alone: {(time.perf_counter() - started) / n * 1e6:.3f} us per publish")
    base = statistics.median(timings["all off"])
    for mode, ts in timings.items():
        med = statistics.median(ts)
        print(f"{mode:12s} {med:8.1f} us/publish  (x{med / base:.3f})  rounds: {' '.join(f'{t:.1f}' for t in ts)}")


if __name__ == "__main__":
    main()
