"""`tradebus doctor` reads the routing the workers read: a routed queue no live worker consumes fails, and a
route whose task is a plain Celery task is flagged (in-process: the checks, a real worker)."""

from __future__ import annotations

import threading

import pytest

from bus.cli.doctor import run_checks
from bus.config import LoadEnvironmentVariables
from bus.dispatch.routing import Route, RoutingTable
from celery_app import make_celery

pytestmark = [pytest.mark.redis, pytest.mark.celery]
TRADEBUS_QUEUES = "tradebus.state,tradebus.risk,tradebus.notify,tradebus.reconcile"


def test_doctor_flags_routed_queues_without_consumer_and_plain_tasks(settings, own_worker, tmp_path) -> None:
    table = RoutingTable.default()
    table.add(Route("fills", "user.fills.book", "user.fills", ("order.filled",)))
    table.add(Route("plain", "user.fills.plain", "user.fills", ("order.cancelled",)))
    s = LoadEnvironmentVariables(None, redis_url=settings.bus_url, celery_broker_url=settings.broker_url,
                                 key_prefix=settings.key_prefix, broker_key_prefix=settings.broker_key_prefix,
                                 routes_file=str(table.to_file(tmp_path / "routes.json")),
                                 task_modules="tests.worker.user_tasks")  # fmt: skip
    # a worker started with the -Q of old: tradebus's queues only
    before = set(threading.enumerate())
    with own_worker(make_celery(s, set_as_current=False), queues=TRADEBUS_QUEUES):
        checks = {c.name: c for c in run_checks(s, ping_timeout=3)}
    # the `inspect` replies' no-ack consumer holds nothing: no held-messages heartbeat outlives the checks
    # (a leaked one retries a gone server forever, its jittered backoff stirring the global random state)
    assert not [t for t in set(threading.enumerate()) - before if t.name == "tradebus-held-messages"]
    assert checks["workers"].status == "ok", checks["workers"]
    assert checks["queue tradebus.state"].status == "ok" and "consumed by" in checks["queue tradebus.state"].detail
    fills = checks["queue user.fills"]
    assert fills.status == "fail" and "no live worker consumes it (route fills, plain)" in fills.detail
    assert "without -Q" in fills.fix
    routes = checks["routes"]
    assert routes.status == "warn" and "route 'plain': task 'user.fills.plain' is a plain Celery task" in routes.detail
    assert "'fills'" not in routes.detail  # a @routed_task
