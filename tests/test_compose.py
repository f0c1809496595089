"""docker-compose.yml cannot run here (no Docker engine): check by reading that it starts what the
README says, with the settings the library and the tests use."""

from __future__ import annotations

from pathlib import Path

import yaml

from bus.config import Settings

COMPOSE = yaml.safe_load((Path(__file__).resolve().parent.parent / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
KNOWN_VARIABLES = {f.validation_alias for f in Settings.model_fields.values()}


def test_redis_is_7_alpine_with_aof_on_a_volume() -> None:
    redis = SERVICES["redis"]
    assert redis["image"] == "redis:7-alpine"
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "healthcheck" in redis


def test_worker_consumes_every_queue_and_beat_runs_the_schedule() -> None:
    worker, beat = SERVICES["worker"], SERVICES["beat"]
    assert worker["command"].startswith("celery -A celery_app worker")
    # no -Q: a worker consumes every routed queue (tests/test_celery_native.py); -E: events for Flower
    assert " -Q" not in worker["command"] and " -E" in worker["command"]
    assert beat["command"].startswith("celery -A celery_app beat")
    for service in (worker, beat):
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        # configured only through variables the settings object reads
        assert set(service["environment"]) <= KNOWN_VARIABLES
        assert service["environment"]["REDIS_URL"].endswith("redis://redis:6379/0}")


def test_flower_is_optional() -> None:
    assert SERVICES["flower"]["profiles"] == ["flower"]
