"""Worker hardening benchmarks (figures in bench/README.md, "worker").

    python bench/bench_worker.py [--drain 3000] [--rounds 3] [--recovery-timeout 60]

1. What the guards cost: one solo worker draining --drain state tasks with the guards (celery_app's
   transport and consumer: entries checked before kombu parses them, arguments checked before the pool,
   the held-messages heartbeat) beside the same worker without them (bench_unguarded_app), side by side,
   rounds interleaved, medians: the worker's CPU time per task (from /proc) and tasks/s.
2. The guards' own CPU per message, timed in-process (stable where 1. is noisy).
3. Dead-worker recovery with the production setting: a prefork worker SIGKILLed as a whole (process
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

PYTHONPATH = os.pathsep.join([str(REPO / "bench"), str(REPO)])


def bench_guards(n: int, rounds: int) -> dict[str, float]:
    from bus.dispatch.messages import MessageBuilder, redis_queue_key
    from bus.events.model import TradeEvent

    s = _settings(f"bench-{uuid.uuid4().hex[:8]}")
    build = MessageBuilder(_app(s)).build
    broker = redis.Redis.from_url(s.broker_url)
    unacked = f"{s.key_prefix}:unacked"
    queues = {"guarded": "tradebus.state", "unguarded": "bench.unguarded"}
    procs = {"guarded": _worker(s, queues["guarded"]),
             "unguarded": _worker(s, queues["unguarded"], app="bench_unguarded_app")}  # fmt: skip
    rates: dict[str, list[float]] = {"guarded": [], "unguarded": []}
    cpu_us: dict[str, list[float]] = {"guarded": [], "unguarded": []}
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
                t, cpu = time.perf_counter(), _cpu_seconds(procs[who])
                broker.lpush(qkey, *msgs)
                _wait(lambda: broker.llen(qkey) == 0 and broker.hlen(unacked) == 0, timeout=300, step=0.01)  # noqa: B023
                rates[who].append(n / (time.perf_counter() - t))
                cpu_us[who].append((_cpu_seconds(procs[who]) - cpu) / n * 1e6)
        out = {f"{who}_{what}": statistics.median(xs[who]) for what, xs in (("tps", rates), ("cpu_us", cpu_us))
               for who in queues}  # fmt: skip
        return {**out, "cpu_cost": out["guarded_cpu_us"] / out["unguarded_cpu_us"] - 1}
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(20)
        _cleanup(s)


def bench_guard_calls(n: int = 20_000) -> dict[str, float]:
    """The guards' own work per state-task message, in this process, best of 7: the checks a worker adds
    before kombu builds a message (envelope_problem) and before the pool (call_problem, on the body Celery
    decodes anyway). Resolves microseconds where the drain rates above move by tens of percent here."""
    import timeit

    from kombu import Connection
    from kombu.utils.json import loads

    from bus.dispatch.messages import MessageBuilder
    from bus.events.model import TradeEvent
    from celery_app.consumer import call_problem
    from celery_app.transport import Message, envelope_problem

    s = _settings(f"bench-{uuid.uuid4().hex[:8]}")
    app = _app(s)
    e = TradeEvent.create_order_created("XAUUSD", "guard", "BUY", 1.0, 1.0)
    item = MessageBuilder(app).build("tradebus.state.apply", f"{e.event_id}:state", [e.to_json()], {"route": "state"},
                                     "tradebus.state")[1]  # fmt: skip
    with Connection(s.broker_url, transport="celery_app.transport:Transport") as conn:
        channel = conn.default_channel
        payload = loads(item)
        message = Message(payload, channel=channel)
        message.accept = {"application/json"}
        message.payload  # noqa: B018 - decoded once, as Celery's strategy does for every task message

        def best(fn) -> float:  # type: ignore[no-untyped-def]
            return min(timeit.repeat(fn, number=n, repeat=7)) / n * 1e6

        return {"envelope_us": best(lambda: envelope_problem(payload, channel.codecs)),
                "call_us": best(lambda: call_problem(app, message))}  # fmt: skip


def _cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    """User + system CPU of the process, all its threads (/proc/<pid>/stat): the guards' cost, unlike
    wall-clock rates, barely moves with what else runs on the machine."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _prefork_worker(s, name: str, lost_timeout: float, log: Path) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    env = dict(os.environ, REDIS_URL=s.bus_url, CELERY_BROKER_URL=s.broker_url, TRADEBUS_KEY_PREFIX=s.key_prefix,
               TRADEBUS_BROKER_KEY_PREFIX=f"{s.key_prefix}:", TRADEBUS_WORKER_LOST_TIMEOUT=str(lost_timeout),
               PYTHONPATH=PYTHONPATH)  # fmt: skip
    cmd = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-P", "prefork", "-c", "1",
           "-Q", "tradebus.state", "--include", "tests.worker_tasks", "--without-gossip", "--without-mingle",
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
    calls = bench_guard_calls()
    print(f"guards per message: envelope check {calls['envelope_us']:.2f} us + call check {calls['call_us']:.2f} us")
    g = bench_guards(a.drain, a.rounds)
    print(f"one solo worker, state task: guarded {g['guarded_cpu_us']:.0f} us CPU/task, {g['guarded_tps']:.0f} "
          f"tasks/s | unguarded {g['unguarded_cpu_us']:.0f} us CPU/task, {g['unguarded_tps']:.0f} tasks/s | "
          f"CPU cost of the guards {g['cpu_cost'] * 100:+.1f}%")  # fmt: skip
    if a.recovery_timeout:
        took = bench_recovery(a.recovery_timeout)
        print(f"dead worker (SIGKILL of its process group) -> task runs on another: {took:.1f} s "
              f"(TRADEBUS_WORKER_LOST_TIMEOUT={a.recovery_timeout:g})")  # fmt: skip


if __name__ == "__main__":
    main()
