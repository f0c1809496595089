"""Per-app, per-process resources of the tasks: settings, keys, routing and one Redis client."""

from __future__ import annotations

import os
import weakref
from typing import Any

import redis

from bus.config import LoadEnvironmentVariables, Settings
from bus.core.connection import make_client
from bus.core.keys import Keys
from bus.dispatch.routing import RoutingTable

from .config import REDELIVERY_CAP

_CONTEXTS: weakref.WeakSet[TaskContext] = weakref.WeakSet()


class TaskContext:
    """Reached by tasks as ``self.app.tradebus``. The client is built once per worker process."""

    def __init__(self, settings: Settings, routing: RoutingTable, redelivery_cap: int, max_countdown: float) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.routing = routing
        self.redelivery_cap = redelivery_cap
        self.max_countdown = max_countdown
        self._client: redis.Redis | None = None
        self._pid = 0
        _CONTEXTS.add(self)

    @property
    def client(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():
            self._client = make_client(self.settings.bus_url, self.settings)
            self._pid = os.getpid()
        return self._client

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None


def task_context(app: Any) -> TaskContext:
    """``app.tradebus``; an app not built by make_celery gets one from the environment, once."""
    ctx: TaskContext | None = getattr(app, "tradebus", None)
    if ctx is None:
        ctx = app.tradebus = TaskContext(LoadEnvironmentVariables(), RoutingTable.default(), REDELIVERY_CAP, 900)
    return ctx


def on_worker_process_init(**_: Any) -> None:
    """A new pool process: drop clients inherited over fork and connect afresh, once."""
    for ctx in list(_CONTEXTS):
        ctx._client = None
        ctx.client.ping()


def on_worker_process_shutdown(**_: Any) -> None:
    for ctx in list(_CONTEXTS):
        ctx.close()
