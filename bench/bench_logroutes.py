"""Log-route benchmarks (figures in bench/README.md, "log routes"); every column of a row in the same run.

    python bench/bench_logroutes.py [--only burst|latency|publish] [--n 20000] [--symbols 20]

1. burst: n events over `symbols` symbols (order.created + order.filled per order), published with
   publish_many, drained by ONE worker (prefork, 2 processes, as the demo runs it) until every event is
   projected and risk-checked: state + risk as log routes, the same two as event routes, and a bare
   Celery app running one trivial task per event (hand-built messages pushed in one pipeline).
2. latency: publish -> state visible, p50/p99, at 200 and 1,000 events/s over 10 symbols, for both modes,
   same worker. "Visible" is the commit of the projection: the event route's task_postrun (after the
   projection's EVALSHA returned), the log route's after-commit hook (after the batch's EXEC returned).
   Stamps are perf_counter() (CLOCK_MONOTONIC, one clock for every process on the machine).
3. publish: publish() of a position.closed event (3 routes: state and risk as log routes, notify as an
   event route), beside the naive bridge (PUBLISH + XADD + 3 x apply_async) and one pipeline of PUBLISH +
   XADD + 3 hand-built task messages; and the cost of the wake flag: publish() of an order.created whose
   flags are already set, beside the same publish with event routes and with no routes at all.

Uses REDIS_URL (default redis://127.0.0.1:6379/9; the broker is the next db), a fresh key prefix per
measure, kombu's global_keyprefix for private queues; deletes its keys afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bus.dispatch.logroutes.effects import Batch, project_state, register_effect  # noqa: E402

STAMPS = os.environ.get("TRADEBUS_BENCH_STAMPS", "")


@register_effect("tradebus_bench.state")
def stamped_state(batch: Batch) -> None:
    """The state projection, plus one perf_counter() stamp per event once its batch has committed."""
    project_state(batch)
    ids = [e.event.event_id for e in batch.entries]
    batch.after_commit(lambda _: _stamp(batch.client, ids))


def _stamp(client: redis.Redis, ids: list[str]) -> None:
    """``event_id commit_time drain_task_id drain_start_time`` per event (see ``latency``'s breakdown)."""
    now = time.perf_counter()
    task, started = _DRAIN_STARTED.get("current", ("-", now))
    client.rpush(STAMPS, *(f"{i} {now!r} {task} {started!r}" for i in ids))


_DRAIN_STARTED: dict[str, tuple[str, float]] = {}  # "current": (task id, perf_counter at its task_prerun)


def _install_drain_stamps() -> None:
    """In a log-route worker: remember when the running drain task started (task_prerun)."""
    from celery import signals

    def pre(task_id: str = "", **_: object) -> None:
        _DRAIN_STARTED["current"] = (task_id, time.perf_counter())

    signals.task_prerun.connect(pre, weak=False)


def _install_task_stamps() -> None:
    """In an event-route worker: stamp each state task when it has run (task_postrun)."""
    from celery import signals

    client = redis.Redis.from_url(os.environ["REDIS_URL"])

    def post(task_id: str = "", task: Any = None, **_: object) -> None:
        if task is not None and task.name == "tradebus.state.apply":
            client.rpush(STAMPS, f"{task_id.split(':')[0]} {time.perf_counter()!r}")

    signals.task_postrun.connect(post, weak=False)


if STAMPS and os.environ.get("TRADEBUS_BENCH_MODE") == "event":
    _install_task_stamps()
elif STAMPS:
    _install_drain_stamps()


# --- helpers ---------------------------------------------------------------------------------------


def _settings(prefix: str, routes_file: str | None = None) -> Any:
    from bus.config import LoadEnvironmentVariables

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9")
    return LoadEnvironmentVariables(None, redis_url=url, key_prefix=prefix, routes_file=routes_file)


def _routes(prefix: str, body: dict[str, Any]) -> str:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{prefix}-routes.json"
    path.write_bytes(orjson.dumps(body))
    return str(path)


def _bus(s: Any) -> Any:
    from bus.core.bus import RedisEventBus
    from bus.dispatch.dispatcher import Dispatcher
    from bus.dispatch.routing import RoutingTable
    from celery_app import make_celery

    table = RoutingTable.from_file(s.routes_file) if s.routes_file else RoutingTable.default()
    app = make_celery(s, table, set_as_current=False)
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "global_keyprefix": f"{s.key_prefix}:"}
    return RedisEventBus(settings=s, dispatcher=Dispatcher(s.broker_url, table, settings=s, app=app))


def _worker(s: Any, queues: str, *, app: str = "celery_app", include: str = "bench_logroutes",
            concurrency: int = 2, **env: str) -> Any:  # fmt: skip
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"{s.key_prefix}-worker.log"
    path = os.pathsep.join([str(REPO / "bench"), str(REPO)])
    environ = dict(os.environ, REDIS_URL=s.bus_url, CELERY_BROKER_URL=s.broker_url, TRADEBUS_KEY_PREFIX=s.key_prefix,
                   TRADEBUS_BROKER_KEY_PREFIX=f"{s.key_prefix}:", TRADEBUS_ROUTES_FILE=s.routes_file or "",
                   PYTHONPATH=path, **env)  # fmt: skip
    cmd = [sys.executable, "-m", "celery", "-A", app, "worker", "-P", "prefork", "-c", str(concurrency), "-Q", queues,
           "--include", include, "--without-gossip", "--without-mingle",
           "--without-heartbeat", "-l", "INFO"]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=out, stderr=subprocess.STDOUT)
    _wait(lambda: b"ready." in log.read_bytes(), timeout=60, step=0.05)
    return proc


def _stop(proc: Any) -> None:
    proc.terminate()
    proc.wait(30)


def _wait(cond: Any, timeout: float = 120.0, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(step)


def _cleanup(s: Any) -> None:
    from bus.core.keyspace import delete_matching

    for url in (s.bus_url, s.broker_url):
        c = redis.Redis.from_url(url)
        delete_matching(c, f"{s.key_prefix}:*")
        c.close()


def _prefix() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


# --- 1. burst ---------------------------------------------------------------------------------------


def _burst_events(n: int, symbols: int) -> list[Any]:
    from bus.events.model import TradeEvent

    per = n // symbols // 2
    out: list[Any] = []
    for start in range(0, per, 25):  # 25 orders (50 events) of one symbol, then the next symbol
        for k in range(symbols):
            sym = f"S{k:02d}"
            for i in range(start, min(per, start + 25)):
                out += (TradeEvent.create_order_created(sym, f"o{i}", "BUY", 100.0 + i, 1.0),
                        TradeEvent.create_order_filled(sym, f"o{i}", 100.0 + i, 1.0))  # fmt: skip
    return out


def _groups_settled(client: redis.Redis, s: Any, symbols: int) -> bool:
    from bus.core.keys import Keys

    keys, pipe = Keys(s.key_prefix), client.pipeline(transaction=False)
    for k in range(symbols):
        pipe.xinfo_groups(keys.log(f"S{k:02d}"))
    return all(len(gs) == 2 and all(g["lag"] == 0 and g["pending"] == 0 for g in gs) for gs in pipe.execute())


def burst(mode: str, n: int, symbols: int) -> dict[str, float]:
    """Seconds from the first publish until every event is projected and risk-checked."""
    from bus.core.keys import Keys

    p = _prefix()
    modes = {"event": {"state": "event", "risk": "event"}, "log": {}}[mode]
    s = _settings(p, _routes(p, {"include_defaults": True, "modes": modes}))
    keys, client = Keys(p), redis.Redis.from_url(s.bus_url, decode_responses=True)
    events = _burst_events(n, symbols)
    proc = _worker(s, "tradebus.state,tradebus.risk")
    try:
        with _bus(s) as bus:
            t0 = time.perf_counter()
            for i in range(0, len(events), 1000):
                bus.publish_many(events[i : i + 1000])
            published = time.perf_counter() - t0
            if mode == "log":
                _wait(lambda: _groups_settled(client, s, symbols), timeout=600, step=0.05)
            else:
                stats = keys.stats()
                _wait(lambda: int(client.hget(stats, "run:tradebus.state.apply") or 0) == len(events)
                      and int(client.hget(stats, "run:tradebus.risk.check") or 0) == len(events),
                      timeout=900, step=0.1)  # fmt: skip
            took = time.perf_counter() - t0
        last = client.hgetall(keys.order("S00", f"o{n // symbols // 2 - 1}"))
        assert last.get("status") == "filled", last  # projected, and in order: filled after created
        return {"events": len(events), "publish_s": published, "total_s": took, "eps": len(events) / took}
    finally:
        _stop(proc)
        client.close()
        _cleanup(s)


def burst_bare(n: int) -> dict[str, float]:
    """A bare Celery app (defaults) running one trivial task per event: pushed in one pipeline, drained."""
    from celery import Celery

    from bus.dispatch.messages import MessageBuilder, redis_queue_key

    s = _settings(_prefix())
    app = Celery("bare-client", broker=s.broker_url, set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": f"{s.key_prefix}:"}
    build, qkey = MessageBuilder(app).build, redis_queue_key("bench.bare", 0, f"{s.key_prefix}:")
    js = _burst_events(2, 1)[0].to_json()
    msgs = [build("tradebus_bench.noop", f"t{i}", [js], {}, "bench.bare")[1] for i in range(n)]
    broker = redis.Redis.from_url(s.broker_url)
    proc = _worker(s, "bench.bare", app="bench_bare_celery_app", include="bench_dispatch")  # its trivial task
    try:
        pipe = broker.pipeline(transaction=False)
        for m in msgs:
            pipe.lpush(qkey, m)
        t0 = time.perf_counter()
        pipe.execute()
        unacked = f"{s.key_prefix}:unacked"
        _wait(lambda: broker.llen(qkey) == 0 and broker.hlen(unacked) == 0, timeout=600, step=0.05)
        took = time.perf_counter() - t0
        return {"events": n, "total_s": took, "eps": n / took}
    finally:
        _stop(proc)
        _cleanup(s)


# --- 2. latency -------------------------------------------------------------------------------------


def latency(mode: str, rate: int, seconds: float, symbols: int = 10) -> dict[str, float]:
    from bus.events.model import TradeEvent

    p = _prefix()
    route = {"name": "state", "task": "tradebus.state.apply", "queue": "tradebus.state", "event_types": ["order.*"]}
    if mode == "log":
        route.update(task="tradebus_bench.state", mode="log")
    s = _settings(p, _routes(p, {"include_defaults": False, "routes": [route]}))
    stamps = f"{p}:stamps"
    proc = _worker(s, "tradebus.state", TRADEBUS_BENCH_STAMPS=stamps, TRADEBUS_BENCH_MODE=mode)
    probe = redis.Redis.from_url(s.bus_url)
    try:
        with _bus(s) as bus:
            warm = [TradeEvent.create_order_created(f"S{i % symbols}", f"w{i}", "BUY", 1.0, 1.0) for i in range(50)]
            for e in warm:
                bus.publish(e)
            _wait(lambda: probe.llen(stamps) >= len(warm))
            probe.delete(stamps)
            n = int(rate * seconds)
            events = [TradeEvent.create_order_created(f"S{i % symbols}", f"o{i}", "BUY", 1.0, 1.0) for i in range(n)]
            sent: dict[str, float] = {}
            start = time.perf_counter()
            for i, e in enumerate(events):
                wait = start + i / rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)  # sleep, not spin: the worker and Redis share the 2 cores
                sent[e.event_id] = time.perf_counter()
                bus.publish(e)
            _wait(lambda: probe.llen(stamps) >= n, timeout=300, step=0.05)
        rows = [r.decode().split() for r in probe.lrange(stamps, 0, -1)]
        lat = sorted((float(row[1]) - sent[row[0]]) * 1000 for row in rows)
        q = lambda xs, f: xs[min(len(xs) - 1, int(len(xs) * f))]  # noqa: E731
        out = {"n": len(lat), "p50_ms": q(lat, 0.5), "p99_ms": q(lat, 0.99), "max_ms": lat[-1]}
        if mode == "log":  # where the time goes: waiting for a drain task to start, then inside the drain
            wait = sorted(max(0.0, float(r[3]) - sent[r[0]]) * 1000 for r in rows)
            inside = sorted((float(r[1]) - max(float(r[3]), sent[r[0]])) * 1000 for r in rows)
            out |= {"wait_p50": q(wait, 0.5), "wait_p99": q(wait, 0.99), "in_p50": q(inside, 0.5),
                    "in_p99": q(inside, 0.99), "drains": len({r[2] for r in rows})}  # fmt: skip
        return out
    finally:
        _stop(proc)
        probe.close()
        _cleanup(s)


# --- 3. publish -------------------------------------------------------------------------------------


def publish(n: int, rounds: int = 9) -> dict[str, float]:
    from bus.core.bus import RedisEventBus
    from bus.core.keys import channel
    from bus.dispatch.messages import MessageBuilder, publisher_app
    from bus.events.model import TradeEvent

    p = _prefix()
    s = _settings(p)
    s_event = _settings(p, _routes(p, {"include_defaults": True, "modes": {"state": "event", "risk": "event"}}))
    closed = lambda i: TradeEvent.create_position_closed("XAUUSD", f"p{i}", 2001.0, 10.5)  # noqa: E731
    created = lambda i: TradeEvent.create_order_created("XAUUSD", f"o{i}", "BUY", 1.0, 1.0)  # noqa: E731
    log_bus, event_bus = _bus(s), _bus(s_event)
    bare_bus = RedisEventBus(settings=s)
    routes = event_bus.dispatcher.routing.routes_for(closed(0))
    assert [r.name for r in routes] == ["state", "risk", "notify"]
    assert [r.name for r in log_bus.dispatcher.routes_for(closed(0))] == ["notify"]
    r = redis.Redis.from_url(s.bus_url)
    plain = publisher_app(s.broker_url, s)  # kombu's own Redis transport, as a user would have
    plain.conf.broker_transport_options = {**plain.conf.broker_transport_options, "global_keyprefix": f"{p}:"}
    build = MessageBuilder(plain).build

    def naive(events: list[Any]) -> None:
        for e in events:
            js = e.to_json()
            r.publish(channel(e.symbol, e.event_type), js)
            r.xadd(f"{p}:{{naive}}:log", {"event": js})
            for rt in routes:
                plain.send_task(rt.task, args=[js], kwargs={"route": rt.name}, task_id=f"{e.event_id}:{rt.name}",
                                queue=rt.queue)  # fmt: skip

    def pipelined(events: list[Any]) -> None:
        for e in events:
            js = e.to_json()
            pipe = r.pipeline(transaction=False)
            pipe.publish(channel(e.symbol, e.event_type), js)
            pipe.xadd(f"{p}:{{naive}}:log", {"event": js})
            for rt in routes:
                pipe.lpush(*build(rt.task, f"{e.event_id}:{rt.name}", [js], {"route": rt.name}, rt.queue))
            pipe.execute()

    def with_bus(bus: Any) -> Any:
        return lambda events: [bus.publish(e) for e in events]

    paths = {"log routes, 3 routes": (with_bus(log_bus), closed), "naive, 3 routes": (naive, closed),
             "pipeline, 3 routes": (pipelined, closed), "event routes, order.created": (with_bus(event_bus), created),
             "log routes, order.created (flags set)": (with_bus(log_bus), created),
             "no routes, order.created": (with_bus(bare_bus), created)}  # fmt: skip
    for bus in (log_bus, event_bus, bare_bus):
        bus.publish(closed(0))  # scripts cached, queues declared, flags set
    rates: dict[str, list[float]] = {k: [] for k in paths}
    order = list(paths.items())
    try:
        for _ in range(rounds):  # interleaved, in a new order each round: a load change hits every path alike
            random.shuffle(order)
            for name, (fn, make) in order:
                events = [make(i) for i in range(n // rounds)]
                t = time.perf_counter()
                fn(events)
                rates[name].append(len(events) / (time.perf_counter() - t))
        return {k: statistics.median(v) for k, v in rates.items()}
    finally:
        for bus in (log_bus, event_bus, bare_bus):
            bus.close()
        _cleanup(s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("burst", "latency", "publish"), default=None)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--publish-n", type=int, default=9000)
    ap.add_argument("--rates", default="200,1000", help="latency: events/s, comma-separated")
    ap.add_argument("--modes", default="log,event", help="latency: log and/or event")
    a = ap.parse_args()
    if a.only in (None, "publish"):
        pub = publish(a.publish_n)
        base = pub["naive, 3 routes"]
        for name, eps in pub.items():
            print(f"publish {name:<40} {eps:8.0f} ev/s  x{eps / base:5.1f} naive")
    if a.only in (None, "burst"):
        rows = {"log": burst("log", a.n, a.symbols), "event": burst("event", a.n, a.symbols), "bare": burst_bare(a.n)}
        for name, row in rows.items():
            print(f"burst {name:<6} {row['events']} events: {row['total_s']:7.2f} s  {row['eps']:8.0f} ev/s"
                  f"  (x{row['eps'] / rows['event']['eps']:.1f} event routes)")  # fmt: skip
    if a.only in (None, "latency"):
        for rate in (int(x) for x in a.rates.split(",")):
            for mode in a.modes.split(","):
                lat = latency(mode, rate, a.seconds)
                print(f"latency {mode:<5} @ {rate:4}/s n={lat['n']:.0f}: p50 {lat['p50_ms']:7.2f} ms"
                      f"  p99 {lat['p99_ms']:8.2f} ms  max {lat['max_ms']:8.2f} ms")  # fmt: skip
                if "drains" in lat:
                    print(f"    {lat['drains']:.0f} drain tasks; waiting for a drain to start p50 {lat['wait_p50']:.2f}"
                          f" p99 {lat['wait_p99']:.2f} ms; start (or publish) -> commit p50 {lat['in_p50']:.2f}"
                          f" p99 {lat['in_p99']:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
