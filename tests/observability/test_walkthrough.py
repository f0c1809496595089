"""The operator's walkthrough (README, Observability): during `tradebus demo` another process's
`tradebus top --once` shows the session live, a scrape of the demo's worker returns the figures the demo's
summary prints, and one trace follows an event from the executor's publish to each of its tasks and
log-route drains (the OpenTelemetry SDK, an in-memory exporter)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from bus.core.bus import RedisEventBus
from bus.dispatch.routing import DEFAULT_ROUTES, Route, RoutingTable
from bus.embedded import free_port
from bus.executor.builder import ExecutorBuilder
from bus.executor.paper import PaperVenue
from tests.helpers import cli_env, dispatcher_for, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.celery]


def test_one_trace_from_the_executors_publish_to_each_task_and_drain(
    spans, settings, worker_app, worker, tmp_path: Path
) -> None:
    # Given the default routes (state and risk: log routes) and an event route of one task per fill
    audit = Route("audit", "tradebus_test.record", "tradebus.notify", ("order.filled",))
    app = worker_app(RoutingTable([*DEFAULT_ROUTES, audit]))
    venue = PaperVenue(symbols=["WALK"])
    venue.set_price("WALK", "2000")
    config = {"source": "walk", "outbox_path": str(tmp_path / "outbox.db"), "symbols": ["WALK"],
              "outbox_flush_interval": 0, "listen_for_breaches": False}  # fmt: skip
    with RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus, worker():
        with ExecutorBuilder.build_from_config(config=config, client=venue, event_bus=bus) as executor:
            # When the executor trades
            executor.buy("WALK", "1")
        (filled,) = [e for _, e in bus.read_log("WALK") if e.event_type.value == "order.filled"]

        def path() -> dict[str, list[Any]] | None:
            finished = spans.get_finished_spans()
            publish = [s for s in finished if s.kind is SpanKind.PRODUCER
                       and s.attributes.get("tradebus.event_id") == filled.event_id]  # fmt: skip
            if not publish:
                return None
            p = publish[0].context
            tasks = [s for s in finished if s.name == "task audit" and s.parent and s.parent.span_id == p.span_id]
            drains = {route: [s for s in finished if s.name == f"drain {route}"
                              and any(link.context.span_id == p.span_id for link in s.links)]
                      for route in ("state", "risk")}  # fmt: skip
            found = {"publish": publish, "tasks": tasks, **drains}
            return found if all(found.values()) else None

        # Then one trace: the executor's publish span, the task's span its child, each drain batch linked to it
        found = wait_for(path, timeout=30, what="the publish, its task and its two log-route drains")
    (publish,) = found["publish"]
    assert publish.attributes["tradebus.symbol"] == "WALK" and publish.attributes["tradebus.log_id"]
    trace_id = publish.context.trace_id
    assert all(t.context.trace_id == trace_id for t in found["tasks"])
    for route in ("state", "risk"):
        (batch,) = found[route]
        assert batch.kind is SpanKind.CONSUMER and batch.attributes["tradebus.route"] == route
        assert {link.context.trace_id for link in batch.links} >= {trace_id}


def _cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bus.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)  # fmt: skip


def _demo_prefix(client: redis.Redis, before: set[bytes]) -> str:
    """The key prefix of the demo started after ``before`` was taken, once its symbols have events."""

    def started() -> str | None:
        for key in client.scan_iter(match="tradebus-demo-*:symbols", count=1000):
            if key not in before and client.scard(key) > 0:
                return key.decode().removesuffix(":symbols")
        return None

    return wait_for(started, timeout=60, what="the demo's first events", interval=0.2)  # type: ignore[no-any-return]


def _scrape(port: int) -> list[Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return [s for f in text_string_to_metric_families(r.read().decode()) for s in f.samples]


def _processes_with(environ_entry: str) -> list[int]:
    """Pids of the live processes whose environment holds ``environ_entry`` (Linux /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and environ_entry.encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@pytest.mark.slow
def test_operator_walkthrough_top_during_the_demo_and_a_scrape_matching_its_summary(
    redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = cli_env(REDIS_URL=redis_url, TRADEBUS_METRICS_PORT=str(port))
    client = redis.Redis.from_url(redis_url)
    before = set(client.scan_iter(match="tradebus-demo-*:symbols", count=1000))
    err = tmp_path / "demo.err"
    with err.open("w") as err_file:
        args = ["demo", "--seconds", "12", "--json", "--linger", "60"]  # the summary, then the worker stays up
        demo = subprocess.Popen([sys.executable, "-m", "bus.cli", *args], env=env, stdout=subprocess.PIPE,
                                stderr=err_file, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        # During the session: another process's `tradebus top --once` shows it live
        prefix = _demo_prefix(client, before)
        top = _cli(
            ["top", "--once", "--interval", "2"], {**cli_env(REDIS_URL=redis_url), "TRADEBUS_KEY_PREFIX": prefix}
        )
        out, top_err = top.communicate(timeout=60)
        assert top.returncode == 0, top_err
        rates = [float(r) for r in re.findall(r"(?m)^\W*(?:order|position|trade)\.\w+\W+([\d.]+)", out)]
        assert rates and max(rates) > 0, out
        for route in ("state", "risk", "notify"):
            assert re.search(rf"(?m)^\W*{route}\W+[\d.]+\W+", out), out
        # After the session (the demo lingers): a scrape of its worker returns the figures its summary prints
        line = demo.stdout.readline() if demo.stdout else ""
        assert line, err.read_text()[-3000:]
        summary = json.loads(line)
        assert summary["ok"], summary["problems"]
        samples = _scrape(port)
    finally:
        demo.terminate()
        demo.wait(60)
        if demo.stdout:
            demo.stdout.close()
        client.close()
    # A terminated demo stops its worker (and an embedded Redis) on its way out: nothing of it lives on
    wait_for(lambda: not _processes_with(f"TRADEBUS_KEY_PREFIX={prefix}"), 30, "the demo's worker to stop")

    def value(name: str, **labels: str) -> float:
        return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("tradebus_dead_letters") == summary["bus"]["dead_letters"]
    assert value("tradebus_kill_switches_engaged") == len(summary["bus"]["kill_switches"]) >= 1
    assert value("tradebus_pending_dispatch") == summary["bus"]["pending_dispatch"]
    assert value("tradebus_tasks_run_total") == summary["tasks"]["run"] > 0
    for route, figures in summary["routes"].items():
        assert value("tradebus_route_done", route=route) == figures["done"], route
        # the pool processes' own histogram counted the same events
        assert value("tradebus_route_latency_seconds_count", route=route) == figures["done"], route
        if figures["done"]:
            mean_ms = value("tradebus_route_latency_mean_seconds", route=route) * 1000
            assert mean_ms == pytest.approx(figures["latency_mean_ms"], abs=0.1), route
        if figures["lag"] is not None:
            assert value("tradebus_logroute_lag", route=route) == figures["lag"], route
    assert {r for r, f in summary["routes"].items() if f["done"]} >= {"state", "risk"}
