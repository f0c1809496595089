"""The beat schedule as data: one row per reconciliation job (name, task, interval).

``make_celery`` reads ``beat_schedule(settings)``; intervals can be changed with
TRADEBUS_BEAT_<JOB>_INTERVAL (seconds, ``settings.beat``), e.g. TRADEBUS_BEAT_REBUILD_INTERVAL=600.
Every entry expires after one interval: a backlog built while no worker ran is not replayed N times
(and ``run_job`` would skip the extra runs anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from bus.config import BeatSettings, Settings
from bus.dispatch.names import RECONCILE_QUEUE, RECONCILE_TASKS, WAKE_TASK


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
    BeatJob("redispatch", RECONCILE_TASKS["redispatch"], 30.0),
    BeatJob("rebuild", RECONCILE_TASKS["rebuild"], 300.0),
    BeatJob("stale_orders", RECONCILE_TASKS["stale_orders"], 60.0),
    BeatJob("broker", RECONCILE_TASKS["broker"], 60.0),
    BeatJob("trim", RECONCILE_TASKS["trim"], 3600.0),
    # log routes' safety net: wake groups with entries waiting and no drainer (bus/dispatch/logroutes/monitor.py).
    # On the reconcile queue with the other safety nets, on purpose: whoever runs beat's jobs runs it, and
    # no deployment needs one more queue to consume. It is short (XINFO GROUPS per group) and a long job
    # (rebuild) holds one pool process, not the queue; the entry expires after one interval, so a stalled
    # queue never piles up copies. The drains it sends go to each route's own queue.
    BeatJob("wake", WAKE_TASK, 5.0),
)


def jobs(beat: BeatSettings | None = None) -> tuple[BeatJob, ...]:
    """JOBS with the intervals ``beat`` (``settings.beat``) sets."""
    beat = beat if beat is not None else BeatSettings()
    out = []
    for job in JOBS:
        interval = getattr(beat, f"{job.name}_interval")
        out.append(job if interval is None else replace(job, interval=interval))
    return tuple(out)


def job(name: str, beat: BeatSettings | None = None) -> BeatJob:
    for j in jobs(beat):
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


def beat_schedule(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """The schedule with the intervals the settings set (TRADEBUS_BEAT_<JOB>_INTERVAL)."""
    return schedule_of(jobs(settings.beat if settings is not None else None))
