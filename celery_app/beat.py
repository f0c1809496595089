"""The beat schedule as data: one row per reconciliation job (name, task, interval).

``make_celery`` reads ``beat_schedule(settings)``; intervals can be changed with
TRADEBUS_BEAT_<JOB>_INTERVAL (seconds), e.g. TRADEBUS_BEAT_REBUILD_INTERVAL=600.
Every entry expires after one interval: a backlog built while no worker ran is not replayed N times
(and ``run_job`` would skip the extra runs anyway).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from bus.errors import ConfigError

RECONCILE_QUEUE = "tradebus.reconcile"


@dataclass(frozen=True)
class BeatJob:
    name: str
    task: str
    interval: float  # seconds

    @property
    def min_gap(self) -> float:
        """Seconds after an effective run during which another copy is skipped (two beats)."""
        return self.interval / 2


JOBS: tuple[BeatJob, ...] = (
    BeatJob("redispatch", "tradebus.reconcile.redispatch", 30.0),
    BeatJob("rebuild", "tradebus.reconcile.rebuild", 300.0),
    BeatJob("stale_orders", "tradebus.reconcile.stale_orders", 60.0),
    BeatJob("broker", "tradebus.reconcile.broker", 60.0),
    BeatJob("trim", "tradebus.reconcile.trim", 3600.0),
    # log routes: wake groups with entries waiting and no drainer (bus/dispatch/logroutes/monitor.py)
    BeatJob("wake", "tradebus.logroute.wake", 5.0),
)


def jobs(environ: Mapping[str, str] | None = None) -> tuple[BeatJob, ...]:
    env = os.environ if environ is None else environ
    out = []
    for job in JOBS:
        var = f"TRADEBUS_BEAT_{job.name.upper()}_INTERVAL"
        raw = env.get(var, "").strip()
        if raw:
            try:
                interval = float(raw)
            except ValueError:
                raise ConfigError(f"{var}={raw!r}: must be a number of seconds") from None
            if interval <= 0:
                raise ConfigError(f"{var}={raw!r}: must be > 0")
            job = replace(job, interval=interval)
        out.append(job)
    return tuple(out)


def job(name: str, environ: Mapping[str, str] | None = None) -> BeatJob:
    for j in jobs(environ):
        if j.name == name:
            return j
    raise KeyError(name)


def schedule_of(rows: tuple[BeatJob, ...]) -> dict[str, dict[str, Any]]:
    return {
        f"tradebus.reconcile.{j.name}": {
            "task": j.task,
            "schedule": j.interval,
            "options": {"queue": RECONCILE_QUEUE, "expires": j.interval},
        }
        for j in rows
    }


BEAT_SCHEDULE: dict[str, dict[str, Any]] = schedule_of(JOBS)


def beat_schedule(settings: Any = None, environ: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The schedule with interval overrides from the environment (and the settings' .env file)."""
    if environ is None and settings is not None:
        environ = settings.environ()
    return schedule_of(jobs(environ))
