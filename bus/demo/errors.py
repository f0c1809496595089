"""The demo's own error: what it needs (a Redis, a worker) could not be started."""

from __future__ import annotations

from bus.errors import BusError


class DemoError(BusError):
    """The demo cannot run here (no Redis can be started, the worker does not come up); the message says why."""
