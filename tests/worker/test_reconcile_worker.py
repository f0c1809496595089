"""Reconciliation tasks on a real worker: two beats sending the same job -> one effective run."""

from __future__ import annotations

import pytest

from bus.config import LoadEnvironmentVariables, ReconcileSettings
from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.core.state import get_order
from bus.domain.reconcile import ReconcileConfig, last_runs
from bus.events.model import TradeEvent
from celery_app import make_celery
from celery_app.beat import BEAT_SCHEDULE, beat_schedule
from tests.helpers import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.celery]


def test_two_beats_one_effective_rebuild(settings, redis_client, worker_app, worker):
    keys = Keys(settings.key_prefix)
    with RedisEventBus(settings=settings, apply_state=True) as bus:
        bus.publish(TradeEvent.create_order_created("XAUUSD", "o1", "BUY", 2000.0, 1.0))
        bus.publish(TradeEvent.create_order_partially_filled("XAUUSD", "o1", 2000.0, 0.4))
    redis_client.hset(keys.order("XAUUSD", "o1"), "filled_volume", "0.9")  # drift
    app = worker_app()
    app.tradebus.reconcile_config = ReconcileConfig(rebuild_grace=0.001)
    entry = app.conf.beat_schedule["tradebus.reconcile.rebuild"]
    for _beat in ("beat-a", "beat-b"):  # both beats fire the same tick
        app.send_task(entry["task"], **entry["options"])
    with worker():
        wait_for(lambda: redis_client.hget(keys.stats(), "run:tradebus.reconcile.rebuild") == "2", what="2 runs")
    assert get_order(redis_client, keys, "XAUUSD", "o1")["filled_volume"] == "0.4"
    run = last_runs(redis_client, keys)["rebuild"]
    assert run["token"] == 1 and run["summary"]["repaired"] == 1
    # the second copy took the lease (token 2) but skipped: the job had just run
    assert redis_client.get(keys.fence("{lease-reconcile-rebuild}")) == "2"


def test_beat_schedule_is_data(monkeypatch):
    assert set(BEAT_SCHEDULE) == {
        f"tradebus.reconcile.{j}" for j in ("redispatch", "rebuild", "stale_orders", "broker", "trim")
    }
    assert all(e["options"]["queue"] == "tradebus.reconcile" for e in BEAT_SCHEDULE.values())
    monkeypatch.setenv("TRADEBUS_BEAT_REBUILD_INTERVAL", "600")
    custom = beat_schedule(LoadEnvironmentVariables(None))
    assert custom["tradebus.reconcile.rebuild"]["schedule"] == 600.0


def test_unconfigured_jobs_report_why(settings):
    app = make_celery(settings.model_copy(update={"reconcile": ReconcileSettings()}), set_as_current=False)
    assert "no broker" in app.tasks["tradebus.reconcile.broker"].apply().get()["reason"]
    assert "no retention" in app.tasks["tradebus.reconcile.trim"].apply().get()["reason"]


def test_the_broker_job_builds_the_configured_broker(settings):
    reconcile = ReconcileSettings(broker_factory="bus.executor.paper:PaperVenue")  # TRADEBUS_BROKER_FACTORY
    app = make_celery(settings.model_copy(update={"reconcile": reconcile}), set_as_current=False)
    report = app.tasks["tradebus.reconcile.broker"].apply().get()
    assert report["ran"], report


def test_redispatch_and_stale_order_tasks_run(settings, celery_app):
    celery_app.tradebus.reconcile_config = ReconcileConfig(redispatch_grace=0.001, stale_order_age=0.001)
    with RedisEventBus(settings=settings, apply_state=True) as bus:
        bus.publish(
            TradeEvent.create_order_created("XAUUSD", "o1", "BUY_LIMIT", 1900.0, 1.0, timestamp="2024-01-01T00:00:00Z")
        )
    report = celery_app.tasks["tradebus.reconcile.redispatch"].apply().get()
    assert report["ran"] and report["redispatched"] == 0
    report = celery_app.tasks["tradebus.reconcile.stale_orders"].apply().get()
    assert report["ran"] and [s["order_id"] for s in report["stale"]] == ["o1"]
    again = celery_app.tasks["tradebus.reconcile.stale_orders"].apply().get()
    assert not again["ran"] and again["reason"].startswith("ran ")
