"""Dispatch benchmarks (figures in bench/README.md, "dispatch").

    python bench/bench_dispatch.py [--n 3000] [--rate 500] [--seconds 6] [--drain 3000]

1. publish() of an event with 3 routes (position.closed: state, risk, notify), events/s, beside the
   naive bridge PUBLISH + XADD + 3 x apply_async, in the same run.
2. publish -> state-visible latency, p50/p99, at --rate events/s with one worker (solo pool).
3. The state task's drain rate on one worker beside a trivial task's (same worker, same queue).

Uses REDIS_URL (default redis://127.0.0.1:6379/9; the broker is the next db), a fresh key prefix,
and kombu's global_keyprefix for private queues; deletes its keys afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import redis
from celery import shared_task

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@shared_task(name="tradebus_bench.noop", ignore_result=True)
def noop(event_json: str, route: str = "") -> None:
    """The trivial task: the baseline the state task is compared with."""


def _settings(prefix: str):  # type: ignore[no-untyped-def]
    from bus.config import LoadEnvironmentVariables

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9")
    return LoadEnvironmentVariables(None, redis_url=url, key_prefix=prefix)


def _app(settings):  # type: ignore[no-untyped-def]
    from celery_app import make_celery

    app = make_celery(settings, set_as_current=False)
    app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                         "global_keyprefix": f"{settings.key_prefix}:"}  # fmt: skip
    return app


def _cleanup(settings) -> None:  # type: ignore[no-untyped-def]
    for url in (settings.bus_url, settings.broker_url):
        c = redis.Redis.from_url(url)
        keys = list(c.scan_iter(match=f"{settings.key_prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            c.delete(*keys[i : i + 500])
        c.close()


def _closed(i: int):  # type: ignore[no-untyped-def]
    from bus.events import TradeEvent

    return TradeEvent.create_position_closed("XAUUSD", f"p{i}", 2001.0, 10.5)


def bench_publish(n: int) -> dict[str, float]:
    from bus.channels import channel
    from bus.dispatch import Dispatcher
    from bus.redis_bus import RedisEventBus

    s = _settings(f"bench-{uuid.uuid4().hex[:8]}")
    app = _app(s)
    try:
        bus = RedisEventBus(settings=s, dispatcher=Dispatcher(s.broker_url, settings=s, app=app))
        assert len(bus.dispatcher.routes_for(_closed(0))) == 3 and bus.dispatcher.stages_in_bus_pipeline
        r = redis.Redis.from_url(s.bus_url)
        routes = bus.dispatcher.routes_for(_closed(0))
        bus.publish(_closed(0))

        def ours(events: list) -> None:  # type: ignore[type-arg]
            for e in events:
                bus.publish(e)

        def naive(events: list) -> None:  # type: ignore[type-arg]  # the same three tasks, as a user would
            for e in events:
                js = e.to_json()
                r.publish(channel(e.symbol, e.event_type), js)
                r.xadd(f"{s.key_prefix}:{{naive}}:log", {"event": js})
                for rt in routes:
                    app.send_task(rt.task, args=[js], kwargs={"route": rt.name}, task_id=f"{e.event_id}:{rt.name}",
                                  queue=rt.queue)  # fmt: skip

        # interleaved rounds, so a load change on the machine hits both paths alike; medians reported
        rates: dict[str, list[float]] = {"ours": [], "naive": []}
        for _ in range(5):
            for name, fn in (("ours", ours), ("naive", naive)):
                events = [_closed(i) for i in range(n // 5)]
                t = time.perf_counter()
                fn(events)
                rates[name].append(len(events) / (time.perf_counter() - t))
        ours_eps, naive_eps = statistics.median(rates["ours"]), statistics.median(rates["naive"])
        bus.close()
        return {"publish_3_routes_eps": ours_eps, "naive_eps": naive_eps, "ratio": ours_eps / naive_eps}
    finally:
        _cleanup(s)


def _worker(s, queues: str):  # type: ignore[no-untyped-def]
    env = dict(os.environ, REDIS_URL=s.bus_url, CELERY_BROKER_URL=s.broker_url, TRADEBUS_KEY_PREFIX=s.key_prefix,
               TRADEBUS_TEST_GLOBAL_KEYPREFIX=f"{s.key_prefix}:",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO / "bench"), str(REPO)]))  # fmt: skip
    cmd = [sys.executable, "-m", "celery", "-A", "support_worker_app", "worker", "-P", "solo", "-Q", queues,
           "--include", "bench_dispatch", "--without-gossip", "--without-mingle", "--without-heartbeat",
           "-l", "WARNING"]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait(cond, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.002)


def bench_latency(rate: int, seconds: float) -> dict[str, float]:
    from bus.channels import Keys
    from bus.dispatch import Dispatcher
    from bus.events import TradeEvent
    from bus.redis_bus import RedisEventBus
    from bus.routing import Route, RoutingTable

    s = _settings(f"bench-{uuid.uuid4().hex[:8]}")
    app = _app(s)
    keys = Keys(s.key_prefix)
    table = RoutingTable([Route("state", "tradebus.state.apply", "tradebus.state", ("order.*",))])
    proc = _worker(s, "tradebus.state")
    try:
        bus = RedisEventBus(settings=s, dispatcher=Dispatcher(s.broker_url, table, settings=s, app=app))
        probe = redis.Redis.from_url(s.bus_url)
        warm = TradeEvent.create_order_created("XAUUSD", "warm", "BUY", 1.0, 1.0)
        bus.publish(warm)
        _wait(lambda: probe.exists(keys.order("XAUUSD", "warm")))
        n = int(rate * seconds)
        sent: list[float] = [0.0] * n
        seen: list[float] = [0.0] * n
        done = threading.Event()

        def watch() -> None:  # one worker, one queue: FIFO, so watch the oldest outstanding order
            i = 0
            while i < n:
                if sent[i] and probe.exists(keys.order("XAUUSD", f"o{i}")):
                    seen[i] = time.perf_counter()
                    i += 1
                else:
                    time.sleep(0.0002)  # leave the CPU to the publisher and the worker
            done.set()

        th = threading.Thread(target=watch, daemon=True)
        th.start()
        events = [TradeEvent.create_order_created("XAUUSD", f"o{i}", "BUY", 1.0, 1.0) for i in range(n)]
        start = time.perf_counter()
        for i, e in enumerate(events):
            target = start + i / rate
            while time.perf_counter() < target:
                pass
            t = time.perf_counter()
            bus.publish(e)
            sent[i] = t
        done.wait(60)
        lat = sorted((b - a) * 1000 for a, b in zip(sent, seen, strict=True))
        bus.close()
        return {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)], "max_ms": lat[-1], "n": n}
    finally:
        proc.terminate()
        proc.wait(20)
        _cleanup(s)


def bench_drain(n: int) -> dict[str, float]:
    from bus.channels import Keys
    from bus.dispatch import Dispatcher
    from bus.events import TradeEvent
    from bus.kombu_messages import MessageBuilder, redis_queue_key

    s = _settings(f"bench-{uuid.uuid4().hex[:8]}")
    app = _app(s)
    keys = Keys(s.key_prefix)
    d = Dispatcher(s.broker_url, settings=s, app=app)
    broker = redis.Redis.from_url(s.broker_url)
    qkey = redis_queue_key("tradebus.state", 0, f"{s.key_prefix}:")
    unacked = f"{s.key_prefix}:unacked"
    proc = _worker(s, "tradebus.state")
    out: dict[str, float] = {}
    try:
        build = MessageBuilder(app).build
        for task in ("tradebus_bench.noop", "tradebus.state.apply", "tradebus_bench.noop", "tradebus.state.apply"):
            msgs = []
            for i in range(n):
                e = TradeEvent.create_order_created("XAUUSD", f"{task}-{i}-{uuid.uuid4().hex[:6]}", "BUY", 1.0, 1.0)
                msgs.append(build(task, f"{e.event_id}:state", [e.to_json()], {"route": "state"}, "tradebus.state")[1])
            _wait(lambda: broker.llen(qkey) == 0 and broker.hlen(unacked) == 0)
            pipe = broker.pipeline(transaction=False)
            for m in msgs:
                pipe.lpush(qkey, m)
            t = time.perf_counter()
            pipe.execute()
            _wait(lambda: broker.llen(qkey) == 0 and broker.hlen(unacked) == 0, timeout=120)
            rate = n / (time.perf_counter() - t)
            out[task] = max(out.get(task, 0.0), rate)  # best of two rounds each
        runs = int(redis.Redis.from_url(s.bus_url).hget(keys.stats(), "run:tradebus.state.apply") or 0)
        assert runs == 2 * n, runs
        d.close()
        return {"trivial_tps": out["tradebus_bench.noop"], "state_tps": out["tradebus.state.apply"],
                "ratio": out["tradebus.state.apply"] / out["tradebus_bench.noop"]}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(20)
        _cleanup(s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--drain", type=int, default=3000)
    a = ap.parse_args()
    p = bench_publish(a.n)
    print(f"publish() 3 routes: {p['publish_3_routes_eps']:8.0f} ev/s | naive PUBLISH+XADD+3x apply_async: "
          f"{p['naive_eps']:6.0f} ev/s | x{p['ratio']:.1f}")  # fmt: skip
    lat = bench_latency(a.rate, a.seconds)
    print(f"publish -> state visible @ {a.rate}/s, 1 worker: p50 {lat['p50_ms']:.2f} ms  p99 {lat['p99_ms']:.2f} ms"
          f"  max {lat['max_ms']:.2f} ms  (n={lat['n']:.0f})")  # fmt: skip
    dr = bench_drain(a.drain)
    print(f"one worker (solo): trivial {dr['trivial_tps']:.0f} tasks/s | state {dr['state_tps']:.0f} tasks/s | "
          f"{dr['ratio'] * 100:.0f}%")  # fmt: skip


if __name__ == "__main__":
    main()
