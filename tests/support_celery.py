"""Celery helpers for tests: apps isolated per test, in-process and subprocess workers, polling.

Every test app gets kombu's ``global_keyprefix`` = the test's key prefix, so its queues are private
even on the shared broker database, and ``broker_cleanup`` deletes them afterwards. (pytest-celery 1.x
replaces the classic ``celery_worker`` fixture with a Docker one, hence these helpers.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from bus.config import Settings
from bus.dispatch.dispatcher import Dispatcher
from bus.dispatch.routing import RoutingTable
from celery_app import make_celery
from tests.helpers import delete_prefix, wait_for  # noqa: F401 - wait_for re-exported for the worker tests

REPO = Path(__file__).resolve().parent.parent
ALL_QUEUES = "tradebus.state,tradebus.risk,tradebus.notify,tradebus.reconcile"


def test_app(settings: Settings, routing: RoutingTable | None = None, **overrides: Any) -> Any:
    """A tradebus Celery app for ``settings`` whose broker keys live under the test's prefix."""
    app = make_celery(settings, routing, set_as_current=False, **overrides)
    opts = dict(app.conf.broker_transport_options)
    if settings.broker_url.startswith(("redis", "unix")):
        opts["global_keyprefix"] = f"{settings.key_prefix}:"
    app.conf.broker_transport_options = opts
    return app


test_app.__test__ = False  # type: ignore[attr-defined]


def dispatcher_for(app: Any, settings: Settings, **kw: Any) -> Dispatcher:
    return Dispatcher(settings.broker_url, app.tradebus.routing, settings=settings, app=app, **kw)


@contextlib.contextmanager
def worker(app: Any, queues: str = ALL_QUEUES, **kw: Any) -> Iterator[Any]:
    """A real Celery worker (solo pool) in a thread of this process."""
    with start_worker(app, perform_ping_check=False, queues=queues.split(","), shutdown_timeout=30,
                      loglevel="WARNING", **kw) as w:  # fmt: skip
        yield w


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        REDIS_URL=settings.bus_url,
        CELERY_BROKER_URL=settings.broker_url,
        TRADEBUS_KEY_PREFIX=settings.key_prefix,
        PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")]),
        **extra,
    )
    return env


@contextlib.contextmanager
def subprocess_worker(
    settings: Settings,
    *,
    queues: str = ALL_QUEUES,
    include: str = "",
    concurrency: int = 1,
    extra_env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A celery_app worker`` (prefork) as a child process configured by environment only.

    TRADEBUS_TEST_GLOBAL_KEYPREFIX keeps its queues private (read by tests/support_worker_app.py).
    """
    cmd = [sys.executable, "-m", "celery", "-A", "support_worker_app", "worker", "-P", "prefork",
           "-c", str(concurrency), "-Q", queues, "--without-gossip", "--without-mingle",
           "--without-heartbeat", "-l", "INFO", "-n", f"w-{settings.key_prefix}@%h"]  # fmt: skip
    if include:
        cmd += ["--include", include]
    env = worker_env(settings, TRADEBUS_TEST_GLOBAL_KEYPREFIX=f"{settings.key_prefix}:", **(extra_env or {}))
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{settings.key_prefix}-worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def worker_log(settings: Settings) -> str:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{settings.key_prefix}-worker.log"
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def celery_settings(settings: Settings, broker_url: str) -> Iterator[Settings]:
    """The test's settings; afterwards the broker keys under its prefix are deleted as well."""
    yield settings
    delete_prefix(broker_url, settings.key_prefix)


@pytest.fixture
def client(celery_settings: Settings) -> Iterator[redis.Redis]:
    """A decoding client on the test's bus Redis."""
    c = redis.Redis.from_url(celery_settings.bus_url, decode_responses=True)
    yield c
    c.close()
