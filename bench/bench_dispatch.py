"""Dispatch benchmarks (figures in bench/README.md, "dispatch").

    python bench/bench_dispatch.py [--n 3000] [--rate 500] [--seconds 6] [--drain 3000]
    python bench/bench_dispatch.py --only publish --compare-with DIR   # DIR: another tree, e.g. main's

1. publish() of an event with 3 routes (position.closed: state, risk, notify), events/s, beside the
   naive bridge PUBLISH + XADD + 3 x apply_async, in the same run; and the client CPU time of each
   (µs per event: the part of the cost the Python code decides). With --compare-with DIR, the same
   measurement runs for DIR ("before") and this tree ("after"), alternately, three times.
2. publish -> state-visible latency, p50/p99, at --rate events/s with one worker (solo pool), beside a
   bare Celery app (Celery's defaults, solo pool) running a trivial task at the same rate: publish ->
   task start.
3. The state task's drain rate on one worker beside a trivial task's (same worker, same queue), and the
   bare Celery worker's drain of the trivial task, in the same run.

Latency is measured without a watcher competing for the 2 cores: the worker stamps
``time.perf_counter()`` (CLOCK_MONOTONIC, the same clock in every process on the machine) in the
task_prerun / task_postrun signals and pushes the stamps to Redis in batches of 50; the publisher
sleeps (rather than spins) until each send time. "State visible" is task_postrun: the projection's
EVALSHA has returned, so the state is readable (an upper bound, by the reply's few microseconds).

Uses REDIS_URL (default redis://127.0.0.1:6379/9; the broker is the next db), a fresh key prefix,
and kombu's global_keyprefix for private queues; deletes its keys afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis
from celery import shared_task

REPO = Path(__file__).resolve().parent.parent
# the tree measured: this one, or --compare-with's (the child runs this file on that tree's code)
sys.path.insert(0, os.environ.get("TRADEBUS_BENCH_TREE", str(REPO)))


@shared_task(name="tradebus_bench.noop", ignore_result=True)
def noop(event_json: str, route: str = "") -> None:
    """The trivial task: the baseline the state task is compared with."""


STAMP_BATCH = 50


def _install_stamps(key: str, url: str) -> None:
    """In the worker: record (task id, start, end) per task, RPUSH them in batches (one round trip / 50)."""
    from celery import signals

    client = redis.Redis.from_url(url)
    buf: list[str] = []
    started: dict[str, float] = {}

    def pre(task_id: str = "", **_: object) -> None:
        started[task_id] = time.perf_counter()

    def post(task_id: str = "", **_: object) -> None:
        buf.append(f"{task_id} {started.pop(task_id, 0.0)!r} {time.perf_counter()!r}")
        if len(buf) >= STAMP_BATCH:
            client.rpush(key, *buf)
            buf.clear()

    signals.task_prerun.connect(pre, weak=False)
    signals.task_postrun.connect(post, weak=False)


if os.environ.get("TRADEBUS_BENCH_STAMPS"):  # only in the bench's worker processes
    _install_stamps(os.environ["TRADEBUS_BENCH_STAMPS"], os.environ["REDIS_URL"])


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
    from bus.core.keyspace import delete_matching

    for url in (settings.bus_url, settings.broker_url):
        c = redis.Redis.from_url(url)
        delete_matching(c, f"{settings.key_prefix}:*")
        c.close()


def _closed(i: int):  # type: ignore[no-untyped-def]
    from bus.events.model import TradeEvent

    return TradeEvent.create_position_closed("XAUUSD", f"p{i}", 2001.0, 10.5)


def bench_publish(n: int) -> dict[str, float]:
    from bus.core.bus import RedisEventBus
    from bus.core.keys import channel
    from bus.dispatch.dispatcher import Dispatcher
    from bus.dispatch.routing import RoutingTable

    try:
        from bus.dispatch.messages import publisher_app
    except ImportError:  # a tree from before it moved there (--compare-with)
        from bus.dispatch.dispatcher import publisher_app  # type: ignore[attr-defined,no-redef]

    s = _settings(f"bench-{uuid.uuid4().hex[:8]}")
    app = _app(s)
    three = RoutingTable.default().with_modes(state="event", risk="event")  # three task messages per publish
    try:
        bus = RedisEventBus(settings=s, dispatcher=Dispatcher(s.broker_url, three, settings=s, app=app))
        assert len(bus.dispatcher.routes_for(_closed(0))) == 3 and bus.dispatcher.stages_in_bus_pipeline
        r = redis.Redis.from_url(s.bus_url)
        routes = bus.dispatcher.routes_for(_closed(0))
        bus.publish(_closed(0))

        def ours(events: list) -> None:  # type: ignore[type-arg]
            for e in events:
                bus.publish(e)

        plain = publisher_app(s.broker_url, s)  # kombu's own Redis transport, as a user would have
        plain.conf.broker_transport = "kombu.transport.redis:Transport"  # not celery_app's (make_celery registers it)
        plain.conf.broker_transport_options = {**plain.conf.broker_transport_options,
                                               "global_keyprefix": f"{s.key_prefix}:"}  # fmt: skip

        def naive(events: list) -> None:  # type: ignore[type-arg]  # the same three tasks, as a user would
            for e in events:
                js = e.to_json()
                r.publish(channel(e.symbol, e.event_type), js)
                r.xadd(f"{s.key_prefix}:{{naive}}:log", {"event": js})
                for rt in routes:
                    plain.send_task(rt.task, args=[js], kwargs={"route": rt.name}, task_id=f"{e.event_id}:{rt.name}",
                                  queue=rt.queue)  # fmt: skip

        # interleaved rounds, so a load change on the machine hits both paths alike; medians reported
        rates: dict[str, list[float]] = {"ours": [], "naive": []}
        cpu: dict[str, list[float]] = {"ours": [], "naive": []}
        for _ in range(5):
            for name, fn in (("ours", ours), ("naive", naive)):
                events = [_closed(i) for i in range(n // 5)]
                t, c = time.perf_counter(), time.process_time()
                fn(events)
                cpu[name].append((time.process_time() - c) / len(events) * 1e6)
                rates[name].append(len(events) / (time.perf_counter() - t))
        ours_eps, naive_eps = statistics.median(rates["ours"]), statistics.median(rates["naive"])
        # the dispatcher's share: building the 3 task messages of one event (no I/O), CPU time, best of 5
        event, payload = _closed(1), _closed(1).to_json()
        build = []
        for _ in range(5):
            c = time.process_time()
            for _ in range(1000):
                bus.dispatcher._messages(event.event_id, payload, routes)
            build.append((time.process_time() - c) / 1000 * 1e6)
        bus.close()
        return {"publish_3_routes_eps": ours_eps, "naive_eps": naive_eps, "ratio": ours_eps / naive_eps,
                "ours_cpu_us": statistics.median(cpu["ours"]), "naive_cpu_us": statistics.median(cpu["naive"]),
                "build_us": min(build)}  # fmt: skip
    finally:
        _cleanup(s)


def _worker(s, queues: str, app: str = "celery_app", stamps: str = ""):  # type: ignore[no-untyped-def]
    env = dict(os.environ, REDIS_URL=s.bus_url, CELERY_BROKER_URL=s.broker_url, TRADEBUS_KEY_PREFIX=s.key_prefix,
               TRADEBUS_BROKER_KEY_PREFIX=f"{s.key_prefix}:",
               TRADEBUS_BENCH_STAMPS=stamps, PYTHONPATH=os.pathsep.join([str(REPO / "bench"), str(REPO)]))  # fmt: skip
    cmd = [sys.executable, "-m", "celery", "-A", app, "worker", "-P", "solo", "-Q", queues,
           "--include", "bench_dispatch", "--without-gossip", "--without-mingle", "--without-heartbeat",
           "-l", "WARNING"]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait(cond, timeout: float = 60.0, step: float = 0.002) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(step)


def _pace(rate: int, n: int, send, stamps_key: str, probe: redis.Redis) -> list[float]:  # type: ignore[no-untyped-def]
    """Call ``send(i)`` at ``rate``/s for i < n (a multiple of STAMP_BATCH), sleeping rather than spinning
    until each send time; wait until the worker has pushed all n stamps; return the send times."""
    sent = [0.0] * n
    start = time.perf_counter()
    for i in range(n):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        sent[i] = time.perf_counter()
        send(i)
    _wait(lambda: probe.llen(stamps_key) >= n, timeout=120, step=0.05)
    return sent


def _latencies(probe: redis.Redis, key: str, sent: dict[str, float]) -> dict[str, float]:
    start, end = [], []
    for row in probe.lrange(key, 0, -1):
        tid, pre, post = row.decode().split(" ")
        if tid in sent:
            start.append((float(pre) - sent[tid]) * 1000)
            end.append((float(post) - sent[tid]) * 1000)
    assert len(start) == len(sent), (len(start), len(sent))
    start.sort()
    end.sort()
    p = lambda xs, q: xs[min(len(xs) - 1, int(len(xs) * q))]  # noqa: E731
    return {"start_p50": p(start, 0.5), "start_p99": p(start, 0.99), "p50_ms": p(end, 0.5),
            "p99_ms": p(end, 0.99), "max_ms": end[-1], "n": len(end)}  # fmt: skip


def bench_latency(rate: int, seconds: float) -> dict[str, float]:
    from bus.core.bus import RedisEventBus
    from bus.dispatch.dispatcher import Dispatcher
    from bus.dispatch.routing import Route, RoutingTable
    from bus.events.model import TradeEvent

    s = _settings(f"bench-{uuid.uuid4().hex[:8]}")
    app = _app(s)
    stamps = f"{s.key_prefix}:stamps"
    table = RoutingTable([Route("state", "tradebus.state.apply", "tradebus.state", ("order.*",))])
    proc = _worker(s, "tradebus.state", stamps=stamps)
    try:
        bus = RedisEventBus(settings=s, dispatcher=Dispatcher(s.broker_url, table, settings=s, app=app))
        probe = redis.Redis.from_url(s.bus_url)
        for w in range(STAMP_BATCH):  # warm up, and wait for the worker
            bus.publish(TradeEvent.create_order_created("XAUUSD", f"warm{w}", "BUY", 1.0, 1.0))
        _wait(lambda: probe.llen(stamps) >= STAMP_BATCH)
        probe.delete(stamps)
        n = int(rate * seconds) // STAMP_BATCH * STAMP_BATCH
        events = [TradeEvent.create_order_created("XAUUSD", f"o{i}", "BUY", 1.0, 1.0) for i in range(n)]
        sent = _pace(rate, n, lambda i: bus.publish(events[i]), stamps, probe)
        out = _latencies(probe, stamps, {f"{e.event_id}:state": t for e, t in zip(events, sent, strict=False)})
        bus.close()
        return out
    finally:
        proc.terminate()
        proc.wait(20)
        _cleanup(s)


def bench_latency_bare(rate: int, seconds: float) -> dict[str, float]:
    """Bare Celery (defaults, solo pool), trivial task, apply_async at ``rate``: publish -> task start."""
    from celery import Celery

    s = _settings(f"bench-{uuid.uuid4().hex[:8]}")
    stamps = f"{s.key_prefix}:stamps"
    app = Celery("bare-client", broker=s.broker_url, set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": f"{s.key_prefix}:"}
    proc = _worker(s, "bench.bare", app="bench_bare_celery_app", stamps=stamps)
    try:
        probe = redis.Redis.from_url(s.bus_url)
        js = _closed(0).to_json()

        def send(i: int) -> None:
            app.send_task("tradebus_bench.noop", args=[js], task_id=f"t{i}", queue="bench.bare")

        for w in range(STAMP_BATCH):
            app.send_task("tradebus_bench.noop", args=[js], task_id=f"w{w}", queue="bench.bare")
        _wait(lambda: probe.llen(stamps) >= STAMP_BATCH)
        probe.delete(stamps)
        n = int(rate * seconds) // STAMP_BATCH * STAMP_BATCH
        sent = _pace(rate, n, send, stamps, probe)
        return _latencies(probe, stamps, {f"t{i}": t for i, t in enumerate(sent)})
    finally:
        proc.terminate()
        proc.wait(20)
        _cleanup(s)


def bench_drain(n: int) -> dict[str, float]:
    """Our worker draining n trivial / n state tasks, and a bare Celery worker draining n trivial tasks;
    two workers started side by side (idle in BRPOP while the other drains), rounds interleaved, best of 2."""
    from celery import Celery

    from bus.core.keys import Keys
    from bus.dispatch.dispatcher import Dispatcher
    from bus.dispatch.messages import MessageBuilder, redis_queue_key
    from bus.events.model import TradeEvent

    s = _settings(f"bench-{uuid.uuid4().hex[:8]}")
    app = _app(s)
    bare = Celery("bare-client", broker=s.broker_url, set_as_current=False)
    bare.conf.broker_transport_options = {"global_keyprefix": f"{s.key_prefix}:"}
    keys = Keys(s.key_prefix)
    d = Dispatcher(s.broker_url, settings=s, app=app)
    broker = redis.Redis.from_url(s.broker_url)
    unacked = f"{s.key_prefix}:unacked"
    procs = [_worker(s, "tradebus.state"), _worker(s, "bench.bare", app="bench_bare_celery_app")]
    out: dict[str, float] = {}
    try:
        builders = {"ours": MessageBuilder(app).build, "bare": MessageBuilder(bare).build}
        rounds = [("bare", "tradebus_bench.noop"), ("ours", "tradebus_bench.noop"), ("ours", "tradebus.state.apply")]
        for who, task in rounds * 2:
            queue = "tradebus.state" if who == "ours" else "bench.bare"
            qkey = redis_queue_key(queue, 0, f"{s.key_prefix}:")
            msgs = []
            for i in range(n):
                e = TradeEvent.create_order_created(
                    "XAUUSD", f"{who}{task}-{i}-{uuid.uuid4().hex[:6]}", "BUY", 1.0, 1.0
                )
                msgs.append(builders[who](task, f"{e.event_id}:state", [e.to_json()], {"route": "state"}, queue)[1])
            _wait(lambda: broker.llen(qkey) == 0 and broker.hlen(unacked) == 0)  # noqa: B023
            pipe = broker.pipeline(transaction=False)
            for m in msgs:
                pipe.lpush(qkey, m)
            t = time.perf_counter()
            pipe.execute()
            _wait(lambda: broker.llen(qkey) == 0 and broker.hlen(unacked) == 0, timeout=120, step=0.01)  # noqa: B023
            rate = n / (time.perf_counter() - t)
            out[f"{who} {task}"] = max(out.get(f"{who} {task}", 0.0), rate)  # best of two rounds each
        runs = int(redis.Redis.from_url(s.bus_url).hget(keys.stats(), "run:tradebus.state.apply") or 0)
        assert runs == 2 * n, runs
        d.close()
        trivial, state = out["ours tradebus_bench.noop"], out["ours tradebus.state.apply"]
        return {"trivial_tps": trivial, "state_tps": state, "ratio": state / trivial,
                "bare_tps": out["bare tradebus_bench.noop"]}  # fmt: skip
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)
        _cleanup(s)


def compare(other: str, n: int) -> None:
    """This file's publish measurement run on ``other``'s code ("before") and this tree's ("after"), alternately."""
    for i in range(1, 4):
        for label, tree in (("before", other), ("after", str(REPO))):
            env = {**os.environ, "TRADEBUS_BENCH_TREE": tree}
            out = subprocess.run([sys.executable, __file__, "--only", "publish", "--n", str(n)], env=env, cwd=tree,
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            print(f"{label} round {i}: {out.strip()}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--drain", type=int, default=3000)
    ap.add_argument("--only", choices=("publish", "latency", "drain"), default=None)
    ap.add_argument("--compare-with", metavar="DIR", help="publish(): measure another tradebus tree too, alternately")
    a = ap.parse_args()
    if a.compare_with:
        compare(a.compare_with, a.n)
        return
    if a.only in (None, "publish"):
        p = bench_publish(a.n)
        print(f"publish() 3 routes: {p['publish_3_routes_eps']:8.0f} ev/s | naive PUBLISH+XADD+3x apply_async: "
              f"{p['naive_eps']:6.0f} ev/s | x{p['ratio']:.1f} | client CPU per event: "
              f"{p['ours_cpu_us']:.0f} us vs {p['naive_cpu_us']:.0f} us | "
              f"3 messages built: {p['build_us']:.1f} us")  # fmt: skip
    if a.only in (None, "latency"):
        bare = bench_latency_bare(a.rate, a.seconds)
        lat = bench_latency(a.rate, a.seconds)
        print(f"@ {a.rate}/s, 1 solo worker, n={lat['n']:.0f}:\n"
              f"  bare Celery, trivial task: publish -> task start p50 {bare['start_p50']:.2f} ms"
              f"  p99 {bare['start_p99']:.2f} ms  (end: p99 {bare['p99_ms']:.2f} max {bare['max_ms']:.2f})\n"
              f"  tradebus publish() -> state task start p50 {lat['start_p50']:.2f} ms  p99 {lat['start_p99']:.2f} ms\n"
              f"  tradebus publish() -> state visible    p50 {lat['p50_ms']:.2f} ms  p99 {lat['p99_ms']:.2f} ms"
              f"  max {lat['max_ms']:.2f} ms")  # fmt: skip
    if a.only in (None, "drain"):
        dr = bench_drain(a.drain)
        print(f"one worker (solo): trivial {dr['trivial_tps']:.0f} tasks/s | state {dr['state_tps']:.0f} tasks/s | "
              f"{dr['ratio'] * 100:.0f}% | bare Celery worker, trivial: {dr['bare_tps']:.0f} tasks/s")  # fmt: skip


if __name__ == "__main__":
    main()
