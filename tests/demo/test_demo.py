"""`tradebus demo` end to end, as a user runs it: once on the machine's Redis, once with no Redis
configured (the demo embeds one). Each run starts a real Celery worker subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
import redis

from bus.embedded import free_port
from tests.helpers import cli_env

pytestmark = [pytest.mark.slow, pytest.mark.celery]

#: the demo promises to finish by itself in under a minute
DEMO_BUDGET_SECONDS = 60
#: the shortest session `--seconds` allows: its 30 ticks (the minimum at any length) play the whole script
SESSION_SECONDS = "3"


def run_demo(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "bus.cli", "demo", "--seconds", SESSION_SECONDS, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_BUDGET_SECONDS + 30,
        stdin=subprocess.DEVNULL,
    )
    return p, time.monotonic() - t0


def check_summary(s: dict[str, Any]) -> None:
    assert s["ok"], (s["problems"], s.get("worker_log_tail"))
    assert len(s["symbols"]) == 3
    by_type = s["events_by_type"]
    for t in (
        "order.created",
        "order.filled",
        "position.opened",
        "trade.executed",
        "risk.limit_breached",
        "order.rejected",
    ):
        assert by_type.get(t, 0) >= 1, (t, by_type)
    assert s["events_total"] == sum(by_type.values())
    # the breach came from the risk task running in the worker, and the kill switch refused an order after it
    assert any(b["rule"] == "max_order_volume" for b in s["risk_breaches"])
    assert s["kill_switch_refusals"] and all("kill switch" in r["reason"] for r in s["kill_switch_refusals"])
    tasks = s["tasks"]
    assert tasks["all_finished"] and tasks["dispatched"] > 0
    assert tasks["run"] >= tasks["dispatched"]  # + the tasks of the breach the worker published
    # state and risk are log routes (drains of their groups), notify an event route (a task per event)
    assert {"tradebus.logroute.drain", "tradebus.notify.send"} <= set(tasks["by_task"])
    assert tasks["dead_lettered"] == 0
    assert s["bus"]["dead_letters"] == tasks["dead_letters_stream"] and isinstance(s["bus"]["kill_switches"], dict)
    assert s["state_projection_matches_broker"]
    lat = s["latency"]
    assert lat["publish"]["n"] > 0 and lat["publish"]["p50_ms"] is not None
    assert lat["publish_to_task_start"]["n"] > 0
    assert s["runtime_seconds"] < DEMO_BUDGET_SECONDS


def test_demo_on_the_machines_redis_cleans_up_after_itself(redis_url: str) -> None:
    p, took = run_demo(cli_env(REDIS_URL=redis_url), "--json")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert took < DEMO_BUDGET_SECONDS
    s = json.loads(p.stdout)
    check_summary(s)
    assert "shared" in s["redis"] and s["key_prefix"].startswith("tradebus-demo-")
    assert all(sym.startswith("DEMO-") for sym in s["symbols"])
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match=f"{s['key_prefix']}:*", count=1000)) == []
    finally:
        client.close()


def test_demo_with_no_redis_configured_embeds_one() -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    p, took = run_demo(cli_env(REDIS_URL=closed), "--json")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert took < DEMO_BUDGET_SECONDS
    s = json.loads(p.stdout)
    check_summary(s)
    assert s["redis"].startswith("embedded redis-server")


def test_demo_human_output_shows_progress_and_summary() -> None:
    p, _ = run_demo(cli_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"), "--embedded", "--symbols", "2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    for needle in (
        "starting a Celery worker",
        "kill switch engaged",
        "events by type",
        "Celery tasks",
        "positions and PnL",
        "publish -> task start",
        "demo OK",
    ):
        assert needle in out, needle
    assert "Traceback" not in out + p.stderr
