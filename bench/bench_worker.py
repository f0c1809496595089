"""Worker hardening benchmarks (figures in bench/README.md, "worker").

    python bench/bench_worker.py [--drain 3000] [--rounds 3] [--recovery-timeout 60]

1. What the guards cost: one solo worker draining --drain state tasks with the guards (celery_app's
   transport and consumer: entries checked before kombu parses them, arguments checked before the pool,
   the held-messages heartbeat) beside the same worker without them (bench_unguarded_app), side by side,
   rounds interleaved, median.
2. Dead-worker recovery with the production setting: a prefork worker SIGKILLed as a whole (process
   group) mid-task; seconds until the task runs again on a second worker, for TRADEBUS_WORKER_LOST_TIMEOUT
   = --recovery-timeout (0: skip).

Uses REDIS_URL (default redis://127.0.0.1:6379/9; the broker is the next db) and a fresh key prefix.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
from bench_dispatch import REPO, _app, _cleanup, _settings, _wait, _worker

PYTHONPATH = os.pathsep.join([str(REPO / "tests"), str(REPO / "bench"), str(REPO)])


def bench_guards(n: int, rounds: int) -> dict[str, float]:
    from bus.dispatch.messages import MessageBuilder, redis_queue_key
    from bus.events.model import TradeEvent

    s = _settings(f"bench-{uuid.uuid4().hex[:8]}")
    build = MessageBuilder(_app(s)).build
    broker = redis.Redis.from_url(s.broker_url)
    unacked = f"{s.key_prefix}:unacked"
    queues = {"guarded": "tradebus.state", "unguarded": "bench.unguarded"}
    procs = [_worker(s, queues["guarded"]), _worker(s, queues["unguarded"], app="bench_unguarded_app")]
    rates: dict[str, list[float]] = {"guarded": [], "unguarded": []}
    try:
        for _ in range(rounds):
            for who, queue in queues.items():
                qkey = redis_queue_key(queue, 0, f"{s.key_prefix}:")
                msgs = []
                for i in range(n):
                    e = TradeEvent.create_order_created("XAUUSD", f"{who}-{i}-{uuid.uuid4().hex[:6]}", "BUY", 1.0, 1.0)
                    msgs.append(build("tradebus.state.apply", f"{e.event_id}:state", [e.to_json()], {"route": "state"},
                                      queue)[1])  # fmt: skip
                _wait(lambda: broker.hlen(unacked) == 0)  # noqa: B023
                t = time.perf_counter()
                broker.lpush(qkey, *msgs)
                _wait(lambda: broker.llen(qkey) == 0 and broker.hlen(unacked) == 0, timeout=300, step=0.01)  # noqa: B023
                rates[who].append(n / (time.perf_counter() - t))
        guarded, unguarded = statistics.median(rates["guarded"]), statistics.median(rates["unguarded"])
        return {"guarded_tps": guarded, "unguarded_tps": unguarded, "cost": 1 - guarded / unguarded}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)
        _cleanup(s)


def _prefork_worker(s, name: str, lost_timeout: float, log: Path) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    env = dict(os.environ, REDIS_URL=s.bus_url, CELERY_BROKER_URL=s.broker_url, TRADEBUS_KEY_PREFIX=s.key_prefix,
               TRADEBUS_TEST_GLOBAL_KEYPREFIX=f"{s.key_prefix}:", TRADEBUS_WORKER_LOST_TIMEOUT=str(lost_timeout),
               PYTHONPATH=PYTHONPATH)  # fmt: skip
    cmd = [sys.executable, "-m", "celery", "-A", "support_worker_app", "worker", "-P", "prefork", "-c", "1",
           "-Q", "tradebus.state", "--include", "support_tasks", "--without-gossip", "--without-mingle",
           "--without-heartbeat", "-l", "INFO", "-n", f"{name}-{s.key_prefix}@%h"]  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def bench_recovery(lost_timeout: float) -> float:
    """Seconds from SIGKILL of a worker's process group, mid-task, to the task running on a second worker."""
    from bus.events.model import TradeEvent

    s = _settings(f"bench-{uuid.uuid4().hex[:8]}")
    app = _app(s)
    client = redis.Redis.from_url(s.bus_url)
    k = f"{s.key_prefix}:test:"
    ev = TradeEvent.create_order_created("XAUUSD", "recovery", "BUY", 1.0, 1.0)
    logs = Path(tempfile.mkdtemp())
    doomed = _prefork_worker(s, "doomed", lost_timeout, logs / "doomed.log")
    spare = None
    try:
        app.send_task("tradebus_test.apply_then_block", args=[ev.to_json()], kwargs={"route": "state"},
                      queue="tradebus.state")  # fmt: skip
        _wait(lambda: client.get(f"{k}pid"), step=0.05)  # running on the doomed worker, effect applied
        spare = _prefork_worker(s, "spare", lost_timeout, logs / "spare.log")
        _wait(lambda: b" ready." in (logs / "spare.log").read_bytes(), step=0.05)  # start-up not measured
        os.killpg(doomed.pid, signal.SIGKILL)
        killed = time.monotonic()
        _wait(lambda: client.llen(f"{k}outcomes") == 2, timeout=lost_timeout + 60, step=0.05)
        return time.monotonic() - killed
    finally:
        for proc in (doomed, spare):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
        _cleanup(s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drain", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--recovery-timeout", type=float, default=60.0)
    a = ap.parse_args()
    g = bench_guards(a.drain, a.rounds)
    print(f"one solo worker, state task: guarded {g['guarded_tps']:.0f} tasks/s | unguarded "
          f"{g['unguarded_tps']:.0f} tasks/s | cost {g['cost'] * 100:+.1f}%")  # fmt: skip
    if a.recovery_timeout:
        took = bench_recovery(a.recovery_timeout)
        print(f"dead worker (SIGKILL of its process group) -> task runs on another: {took:.1f} s "
              f"(TRADEBUS_WORKER_LOST_TIMEOUT={a.recovery_timeout:g})")  # fmt: skip


if __name__ == "__main__":
    main()
