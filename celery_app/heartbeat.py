"""A dead worker's tasks run again within TRADEBUS_WORKER_LOST_TIMEOUT; a live worker keeps what it holds.

kombu's Redis transport emulates acks: a delivered message stays in the ``unacked`` hash, scored in the
``unacked_index`` zset with its delivery time, until it is acked; any worker's ``restore_visible`` sweep
pushes the entries older than ``visibility_timeout`` back onto their queues. Stock kombu cannot tell a
dead worker from a live one that holds a message for long — a task running, or a retry waiting for its
countdown, which Celery holds unacked (celery#2599, kombu#337) — so the timeout had to outlast the longest
countdown (an hour here), and the tasks of a worker SIGKILLed as a whole waited that long.

Here every consuming channel runs a heartbeat thread that, each ``unacked_refresh_interval``:
- re-scores the messages its worker holds with the current time (``ZADD XX``: a message acked meanwhile
  is not brought back), so while the worker lives none of them looks older than one interval;
- runs the restore sweep itself, so sweeps happen on time whatever the pool (a solo or threads worker runs
  no timer while a task keeps it busy).
When the worker dies, its messages stop being refreshed and a live worker's sweep restores them once
``visibility_timeout`` has passed (celery_app.config.recovery_options keeps the sum within the bound).
Redelivered tasks run again (effects are idempotent, G3) under the redelivery cap of the base task.

Rejected alternative: retries re-enqueued from a delay zset instead of held by the worker. The worker would
no longer hold countdowns, but it still holds a running task for up to ``task_time_limit``, so the timeout
still could not be short; and each ETA a caller sets would need the same detour.

Scores and the sweep's cut-off use each worker's own clock, as kombu does: worker clocks must agree to well
within the timeout (NTP).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

log = logging.getLogger(__name__)

# Held while the heartbeat talks to Redis, and by a fork (prefork replacing a pool process) for its
# duration: a child must not inherit a redis-py pool lock taken by a thread that does not exist in it.
_FORK_LOCK = threading.Lock()
os.register_at_fork(before=_FORK_LOCK.acquire, after_in_parent=_FORK_LOCK.release, after_in_child=_FORK_LOCK.release)
# Delivery tags per ZADD: a worker holding thousands of ETA tasks refreshes them in a few commands.
REFRESH_BATCH = 1000


class HeldMessagesHeartbeat:
    """A daemon thread refreshing one kombu Redis channel's held messages and sweeping for stale ones."""

    def __init__(self, channel: Any, interval: float) -> None:
        self._channel = weakref.ref(channel)  # the thread must not keep a closed channel alive
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tradebus-held-messages", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=self.interval)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            channel = self._channel()
            if channel is None or channel.closed:
                return
            try:
                with _FORK_LOCK:
                    refresh_held(channel)
                    channel.qos.restore_visible(num=channel.unacked_restore_limit, interval=1)
            except Exception as e:  # noqa: BLE001 - Redis away or the channel closing: try again next beat
                log.warning("held-messages heartbeat failed (%s: %s); retrying in %.1fs", type(e).__name__, e,
                            self.interval)  # fmt: skip
            del channel


def refresh_held(channel: Any) -> int:
    """Score every message ``channel`` holds unacked with the current time; returns how many it holds."""
    # QoS._delivered is the consuming thread's dict of held messages; list() copies its keys in one step
    # under the GIL (str keys: no Python code runs meanwhile).
    tags = list(channel.qos._delivered)
    if tags:
        now = time.time()
        with channel.conn_or_acquire() as client:
            for i in range(0, len(tags), REFRESH_BATCH):
                client.zadd(channel.unacked_index_key, dict.fromkeys(tags[i : i + REFRESH_BATCH], now), xx=True)
    return len(tags)
