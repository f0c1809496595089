"""A real prefork worker serves /metrics (TRADEBUS_METRICS_PORT): after real work its counters say what happened."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus.config import Settings
from bus.dispatch.factory import EventBusFactory
from bus.events.model import TradeEvent
from tests.helpers import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.celery, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of one scrape; empty while the server is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_worker_metrics_count_runs_retries_and_dead_letters_and_logs_json_lines(
    settings: Settings, tmp_path: Path, subprocess_worker: Any, worker_log: Any
) -> None:
    # Given a worker with metrics on and a route whose task always fails, retried once then dead-lettered
    routes = tmp_path / "routes.json"
    once = {"max_retries": 1, "backoff": 0.01, "backoff_max": 0.02}
    flaky = {"name": "flaky", "task": "tradebus_test.flaky", "queue": "tradebus.notify",
             "event_types": ["trade.failed"], "retry": once}  # fmt: skip
    # state and risk as event routes: a task per event and route, each counted under its route
    routes.write_text(json.dumps({"routes": [flaky], "modes": {"state": "event", "risk": "event"}}))
    port = _free_port()
    env = {"TRADEBUS_ROUTES_FILE": str(routes), "TRADEBUS_METRICS_PORT": str(port),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "TRADEBUS_LOG_FORMAT": "json"}  # fmt: skip
    (tmp_path / "prom").mkdir()
    publisher = settings.model_copy(update={"routes_file": str(routes)})
    with subprocess_worker(settings, include="tests.worker_tasks", extra_env=env) as proc:
        wait_for(lambda: scrape(port) or proc.poll() is not None, timeout=60, what="/metrics up")
        assert proc.poll() is None, worker_log(settings)[-3000:]
        # When: two orders and one failing trade are published
        with EventBusFactory.create_from_env(publisher) as bus:
            receipts = [
                bus.publish(TradeEvent.create_order_created("XAUUSD", f"o{i}", "buy", 1.0, 2000.0)) for i in range(2)
            ]
            receipts.append(bus.publish(TradeEvent.create_trade_failed("XAUUSD", "boom", correlation_id="c-7")))
        expected_runs = Counter(r for receipt in receipts for r in receipt.dispatched if r != "flaky")
        assert "flaky" in receipts[-1].dispatched and expected_runs

        def settled() -> dict[Any, float] | None:
            samples = scrape(port)
            # the dead letter is counted inside the last attempt, its duration only as that attempt ends
            done = (
                value(samples, "tradebus_tasks_dead_lettered_total", route="flaky") == 1
                and value(samples, "tradebus_task_seconds_count", route="flaky") >= 2
                and all(value(samples, "tradebus_task_seconds_count", route=r) >= n for r, n in expected_runs.items())
            )
            return samples if done else None

        samples = wait_for(settled, timeout=60, what="the tasks to finish")
    # Then: the counters match what happened, per route and queue
    for route, n in expected_runs.items():
        assert value(samples, "tradebus_tasks_run_total", route=route) == n, route
        assert value(samples, "tradebus_task_seconds_count", route=route) == n, route
    assert value(samples, "tradebus_tasks_retried_total", route="flaky", queue="tradebus.notify") == 1
    assert value(samples, "tradebus_tasks_dead_lettered_total", route="flaky", queue="tradebus.notify") == 1
    assert value(samples, "tradebus_tasks_run_total", route="flaky") == 0
    assert value(samples, "tradebus_task_seconds_count", route="flaky") == 2  # both attempts timed
    # and the Redis-side gauges, computed on the scrape
    assert value(samples, "tradebus_dead_letters") == 1
    assert value(samples, "tradebus_redis_up") == 1
    # and the worker logged JSON lines; the dead letter's carries the event's fields
    lines = [json.loads(line) for line in worker_log(settings).splitlines() if line.startswith("{")]
    assert lines and all({"asctime", "level", "logger", "message"} <= set(line) for line in lines)
    failed = receipts[-1].event_id
    (dead,) = [line for line in lines if "dead-lettered" in line["message"]]
    assert (dead["logger"], dead["level"]) == ("celery_app.tasks.base", "ERROR")
    fields = (dead["event_id"], dead["route"], dead["symbol"], dead["correlation_id"])
    assert fields == (failed, "flaky", "XAUUSD", "c-7")
