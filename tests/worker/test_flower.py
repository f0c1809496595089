"""Flower against tradebus as compose runs it (``celery -A celery_app flower``, a worker with -E): the broker
page and queue lengths read the queues, and the bridge's tasks go sent -> received -> succeeded."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.core.bus import RedisEventBus
from bus.dispatch.routing import Route, RoutingTable
from bus.events.model import TradeEvent
from celery_app import make_celery
from tests.helpers import dispatcher_for, wait_for

pytest.importorskip("flower")
pytestmark = [pytest.mark.redis, pytest.mark.celery, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
AUTH = "ops:secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _flower(settings, port: int, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ, REDIS_URL=settings.bus_url, CELERY_BROKER_URL=settings.broker_url,
               TRADEBUS_KEY_PREFIX=settings.key_prefix, TRADEBUS_BROKER_KEY_PREFIX=settings.broker_key_prefix,
               PYTHONPATH=str(REPO))  # fmt: skip
    cmd = [sys.executable, "-m", "celery", "-A", "celery_app", "flower", "--address=127.0.0.1", f"--port={port}",
           f"--basic-auth={AUTH}"]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(20)


def _get(port: int, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(AUTH.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
            kind = response.headers.get("Content-Type", "")
            return response.status, json.loads(body) if "json" in kind else body.decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError:
        return 0, None


def test_flower_sees_the_queues_and_the_bridges_tasks(settings, subprocess_worker, worker_log, tmp_path) -> None:
    table = RoutingTable([Route("fills", "tradebus_test.record", "tradebus.state", ("order.filled",)),
                          Route("probe", "tradebus_test.record", "tradebus.risk", ("order.created",))])  # fmt: skip
    app = make_celery(settings, table, set_as_current=False, task_send_sent_event=True)
    port = _free_port()
    flower_log = tmp_path / "flower.log"
    events = [TradeEvent.create_order_filled("XAUUSD", f"o{i}", 2000.0, 1.0) for i in range(2)]
    ids = {f"{e.event_id}:fills" for e in events}
    with (
        _flower(settings, port, flower_log),
        RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus,
    ):
        wait_for(lambda: _get(port, "/api/workers")[0] == 200, timeout=60, interval=0.2,
                 what=f"Flower answering\n{flower_log.read_text(errors='replace')[-2000:]}")  # fmt: skip

        def flower_saw_a_probe() -> bool:  # its event receiver subscribes after its HTTP server answers
            probe = TradeEvent.create_order_created("XAUUSD", "probe", "BUY", 1.0, 1.0)
            bus.publish(probe)
            _, tasks = _get(port, "/api/tasks")
            return any(t.get("sent") for t in (tasks or {}).values())

        wait_for(flower_saw_a_probe, timeout=30, interval=0.3, what="Flower receiving task-sent events")
        for e in events:
            bus.publish(e)
        # no worker yet: the tasks wait, and Flower reads the queue (the 404 it gave a custom scheme)
        status, lengths = _get(port, "/api/queues/length")
        assert status == 200, lengths
        assert {"name": "tradebus.state", "messages": 2} in lengths["active_queues"]
        status, page = _get(port, "/broker")
        assert status == 200 and "tradebus.state" in page
        with subprocess_worker(settings, queues="", include="tests.worker_tasks", args=("-E",)):

            def succeeded() -> dict[str, Any]:
                _, tasks = _get(port, "/api/tasks")
                mine = {tid: t for tid, t in (tasks or {}).items() if tid in ids}
                return mine if len(mine) == 2 and all(t["state"] == "SUCCESS" for t in mine.values()) else {}

            tasks = wait_for(succeeded, timeout=60, interval=0.3,
                             what=f"Flower showing both tasks succeeded\n{worker_log(settings)[-2000:]}")  # fmt: skip
    for task in tasks.values():
        assert task["name"] == "tradebus_test.record"
        assert task["sent"] and task["received"] and task["succeeded"]  # task-sent, then the worker's -E events
        assert task["sent"] <= task["received"] <= task["succeeded"]
