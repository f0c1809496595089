"""The cost of observability in instructions (valgrind's callgrind), repeatable on a loaded machine.

    python bench/bench_observability_cost.py [--small 100] [--large 600] [--compare-with DIR]

Wall-clock is noise on a box shared by several engineers; the instructions a process executes are not
(PYTHONHASHSEED fixed; two runs of one setting agree within ~0.1%). Each figure is the instructions per
event of one client process: ``(I(large) - I(small)) / (large - small)``, which cancels start-up, imports
and warm-up, measured for

* ``publish()`` of an order.created with the default routes (state and risk: log routes), and
* the state route's drain (``Drainer.run``: read, ``state.lua``, XACK in one MULTI per batch of 100) of
  entries published beforehand by a process that is not measured,

with everything off, with metrics on (prometheus-client), and with a tracer configured (the SDK's
TracerProvider with a BatchSpanProcessor exporting nowhere: what recording and handing the spans over
costs; ``--exporter memory`` keeps them in memory instead; ``--modes off,sampled``: the SDK sampling one
trace in 100, the others' context still carried). With ``--compare-with DIR`` the same runs
for DIR (e.g. a checkout of main): "off" there against "off" here is what the hooks cost when off.
Redis's own instructions are not counted (another process): a traced publish also makes Redis store the
``tp`` field and send a 55-byte longer broadcast.

Uses REDIS_URL (default redis://127.0.0.1:6379/9; the broker is the next db) under a fresh key prefix,
deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODES = ("off", "metrics", "tracing")
WARM = 30  # events published (or drained) before the measured ones, in every run alike


# --- the measured process --------------------------------------------------------------------------


def _settings(prefix: str) -> Any:
    from bus.config import LoadEnvironmentVariables

    return LoadEnvironmentVariables(None, redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9"),
                                    key_prefix=prefix)  # fmt: skip


def _switch(mode: str, exporter: str) -> None:
    from bus.observability import metrics, tracing

    if mode == "metrics":
        metrics.enable_metrics()
    elif mode in ("tracing", "sampled"):
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

        class Nowhere(SpanExporter):
            def export(self, spans: Any) -> Any:
                from opentelemetry.sdk.trace.export import SpanExportResult

                return SpanExportResult.SUCCESS

        # "sampled": 1 trace in 100 recorded (the others still carry their context, flagged not sampled)
        provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01)) if mode == "sampled" else ALWAYS_ON)
        if exporter == "memory":
            provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(Nowhere()))
        tracing.set_tracer_provider(provider)


def _bus(prefix: str) -> Any:
    from bus.core.bus import RedisEventBus
    from bus.dispatch.dispatcher import Dispatcher
    from bus.dispatch.routing import RoutingTable

    s = _settings(prefix)
    return RedisEventBus(settings=s, dispatcher=Dispatcher(s.broker_url, RoutingTable.default(), settings=s))


def _events(tag: str, n: int) -> list[Any]:
    from bus.events.model import TradeEvent

    return [TradeEvent.create_order_created("BENCHOBS", f"{tag}-{i}", "BUY", 2000.0, 0.1) for i in range(n)]


def child_publish(prefix: str, mode: str, n: int, exporter: str) -> None:
    _switch(mode, exporter)
    with _bus(prefix) as bus:
        for e in _events("warm", WARM):
            bus.publish(e)
        for e in _events("run", n):
            bus.publish(e)


def child_drain(prefix: str, mode: str, n: int, exporter: str) -> None:
    from bus.dispatch.logroutes.config import LogRouteConfig
    from bus.dispatch.logroutes.drain import DONE, Drainer
    from bus.dispatch.logroutes.effects import effect_for
    from bus.dispatch.routing import RoutingTable

    _switch(mode, exporter)
    route = RoutingTable.default().get("state")
    assert route is not None
    config = LogRouteConfig(batch=100, time_budget=3600.0)
    with _bus(prefix) as bus:
        drainer = Drainer(bus.client, bus.keys, route, "BENCHOBS", effect_for(route), config=config, publisher=bus)
        out = drainer.run()
        assert out.status == DONE and out.acked == WARM + n, out


# --- the orchestration -----------------------------------------------------------------------------


def _instructions(what: str, mode: str, n: int, code: Path, exporter: str) -> int:
    """Instructions the process executed for ``what`` (publish / drain) of WARM + ``n`` events."""
    prefix = f"bench-obscost-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=f"{code}{os.pathsep}{REPO / 'bench'}")
    try:
        if what == "drain":  # the entries to drain, published by a process that is not measured
            _run([sys.executable, __file__, "--child", "prepare", prefix, mode, str(n), exporter], env)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "callgrind.out"
            _run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-line=no",
                  "--compress-strings=no", sys.executable, __file__, "--child", what, prefix, mode, str(n),
                  exporter], env)  # fmt: skip
            totals = re.search(r"^(?:totals|summary): (\d+)", out.read_text(), re.M)
            assert totals, "no totals in the callgrind output"
            return int(totals.group(1))
    finally:
        _run([sys.executable, __file__, "--child", "cleanup", prefix, mode, "0", exporter], env)


def child_prepare(prefix: str, mode: str, n: int, exporter: str) -> None:
    _switch(mode if mode == "tracing" else "off", exporter)  # traced entries carry a context to link
    with _bus(prefix) as bus:
        for e in _events("warm", WARM) + _events("run", n):
            bus.publish(e)


def child_cleanup(prefix: str, *_: Any) -> None:
    import redis

    from bus.core.keyspace import delete_matching

    s = _settings(prefix)
    for url in (s.bus_url, s.broker_url):
        c = redis.Redis.from_url(url)
        delete_matching(c, f"{prefix}:*")
        c.close()


def _run(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])}... failed:\n{done.stderr[-3000:]}")


def per_event(what: str, mode: str, small: int, large: int, code: Path, exporter: str) -> float:
    lo = _instructions(what, mode, small, code, exporter)
    hi = _instructions(what, mode, large, code, exporter)
    return (hi - lo) / (large - small)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--small", type=int, default=100)
    p.add_argument("--large", type=int, default=600)
    p.add_argument("--repeat", type=int, default=2, help="measure each setting this many times (repeatability)")
    p.add_argument("--compare-with", type=Path, default=None, help="another tree: its 'off' beside this one's")
    p.add_argument("--exporter", choices=("batch", "memory"), default="batch")
    p.add_argument("--only", choices=("publish", "drain"), default=None)
    p.add_argument("--modes", default=",".join(MODES), help="of off,metrics,tracing,sampled (the first: baseline)")
    p.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        what, prefix, mode, n, exporter = a.child
        {"publish": child_publish, "drain": child_drain, "prepare": child_prepare,
         "cleanup": child_cleanup}[what](prefix, mode, int(n), exporter)  # fmt: skip
        return
    print(f"instructions per event, callgrind, ({a.large} - {a.small} events) / difference; load: "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    modes = a.modes.split(",")
    for what in (a.only,) if a.only else ("publish", "drain"):
        trees = [("this tree", REPO)] + ([("compared", a.compare_with.resolve())] if a.compare_with else [])
        base = None
        for label, code in trees:
            for mode in modes if label == "this tree" else ("off",):
                runs = [per_event(what, mode, a.small, a.large, code, a.exporter) for _ in range(a.repeat)]
                mean = sum(runs) / len(runs)
                base = mean if base is None else base
                spread = (max(runs) - min(runs)) / mean * 100
                print(f"{what:8s} {label:10s} {mode:8s} {mean:12,.0f} instr/event  x{mean / base:.4f}  "
                      f"(runs {' '.join(f'{r:,.0f}' for r in runs)}; spread {spread:.2f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
