"""Fixtures (a plugin of tests/conftest.py): subprocess workers, for the tests that kill a worker's
process: ``celery -A celery_app worker`` as
production runs it, configured by environment only, its queues under the test's key prefix."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bus.config import Settings

REPO = Path(__file__).resolve().parents[1]
ALL_QUEUES = "tradebus.state,tradebus.risk,tradebus.notify,tradebus.reconcile"


def _log_path(settings: Settings, name: str = "w") -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"{settings.key_prefix}-{name}.log"


@contextlib.contextmanager
def _subprocess_worker(
    settings: Settings,
    *,
    queues: str = ALL_QUEUES,
    include: str = "",
    name: str = "w",
    extra_env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    # queues="": no -Q, the worker consumes every routed queue
    cmd = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-P", "prefork",
           "-c", "1", *(("-Q", queues) if queues else ()), "--without-gossip", "--without-mingle",
           "--without-heartbeat", "-l", "INFO", "-n", f"{name}-{settings.key_prefix}@%h", *args]  # fmt: skip
    if include:
        cmd += ["--include", include]
    env = dict(os.environ)
    env.update(
        REDIS_URL=settings.bus_url,
        CELERY_BROKER_URL=settings.broker_url,
        TRADEBUS_KEY_PREFIX=settings.key_prefix,
        TRADEBUS_BROKER_KEY_PREFIX=settings.broker_key_prefix,
        TRADEBUS_MAX_EVENT_BYTES=str(settings.max_event_bytes),
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        **(extra_env or {}),
    )
    with open(_log_path(settings, name), "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        yield proc
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started with ``start_new_session`` and everything in its group (a worker's pool):
    SIGTERM for a clean shutdown, SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="session")
def subprocess_worker() -> Callable[..., contextlib.AbstractContextManager[subprocess.Popen[bytes]]]:
    """``with subprocess_worker(settings, queues=..., include=..., args=...) as proc:`` a prefork worker process
    (its own session: the test may SIGKILL its pool children); stopped with SIGTERM afterwards."""
    return _subprocess_worker


@pytest.fixture(scope="session")
def worker_log() -> Callable[..., str]:
    """``worker_log(settings, name="w")``: what that subprocess worker logged so far."""

    def read(settings: Settings, name: str = "w") -> str:
        path = _log_path(settings, name)
        return path.read_text(errors="replace") if path.exists() else ""

    return read
