"""The cost of observability on publish(): all off, metrics on, tracing on, alternately, in the same run.

    python bench/bench_observability.py [--n 3000] [--rounds 5] [--drain 2000]

Each round publishes --n events (log + broadcast, no dispatcher: the cheapest publish, so the hooks'
fixed cost shows most) once per mode, modes alternating so drift on the shared machine hits both alike.
Prints the median microseconds per publish of each mode and the ratio to "off", and the recording's own
cost (timed alone, so the shared machine's noise does not drown it).

--drain N: the state task's drain rate on one solo worker with metrics off beside one with
TRADEBUS_METRICS_PORT set (each on its own key prefix and queues), rounds interleaved, best of two.

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

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import redis  # noqa: E402

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


def bench_drain(n: int) -> dict[str, float]:
    """State tasks per second drained by a worker with metrics off and one with metrics on."""
    from bench_dispatch import _app, _cleanup, _settings, _wait

    from bus.dispatch.messages import MessageBuilder, redis_queue_key

    workers = {mode: _settings(f"bench-obs-{mode}-{uuid.uuid4().hex[:6]}") for mode in ("off", "on")}
    procs = [_state_worker(s, metrics_port=19808 if mode == "on" else None) for mode, s in workers.items()]
    best: dict[str, float] = {}
    try:
        for _ in range(2):
            for mode, s in workers.items():
                broker = redis.Redis.from_url(s.broker_url)
                qkey, unacked = redis_queue_key("tradebus.state", 0, f"{s.key_prefix}:"), f"{s.key_prefix}:unacked"
                build = MessageBuilder(_app(s)).build
                msgs = []
                for i in range(n):
                    e = TradeEvent.create_order_created("XAUUSD", f"{mode}-{i}-{uuid.uuid4().hex[:6]}", "BUY", 1.0, 1.0)
                    msgs.append(build("tradebus.state.apply", f"{e.event_id}:state", [e.to_json()],
                                      {"route": "state"}, "tradebus.state")[1])  # fmt: skip
                pipe = broker.pipeline(transaction=False)
                for m in msgs:
                    pipe.lpush(qkey, m)
                started = time.perf_counter()
                pipe.execute()
                _wait(lambda: broker.llen(qkey) == 0 and broker.hlen(unacked) == 0, timeout=180, step=0.01)  # noqa: B023
                best[mode] = max(best.get(mode, 0.0), n / (time.perf_counter() - started))
                broker.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)
        for s in workers.values():
            _cleanup(s)
    return best


def _state_worker(s, metrics_port: int | None):  # type: ignore[no-untyped-def]
    import subprocess

    env = dict(os.environ, REDIS_URL=s.bus_url, CELERY_BROKER_URL=s.broker_url, TRADEBUS_KEY_PREFIX=s.key_prefix,
               TRADEBUS_BROKER_KEY_PREFIX=f"{s.key_prefix}:", PYTHONPATH=str(REPO))  # fmt: skip
    env.pop("TRADEBUS_METRICS_PORT", None)
    if metrics_port is not None:
        env["TRADEBUS_METRICS_PORT"] = str(metrics_port)
    cmd = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-P", "solo", "-Q", "tradebus.state",
           "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--drain", type=int, default=0, help="also the state task's drain rate, metrics off vs on")
    a = p.parse_args()
    if a.drain:
        rates = bench_drain(a.drain)
        print(f"state task drain, 1 solo worker: metrics off {rates['off']:.0f}/s | on {rates['on']:.0f}/s "
              f"(x{rates['on'] / rates['off']:.3f})")  # fmt: skip
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
