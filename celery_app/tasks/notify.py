"""Notify task: deliver the event to the log and webhook sinks (bus.notify).

A RetryableError (5xx, timeout, refused) is retried by the route's policy; a PermanentNotifyError
(4xx) carries ``retryable = False`` and is dead-lettered at once by the base task.
"""

from __future__ import annotations

from typing import Any

from bus.dispatch.names import NOTIFY_TASK
from bus.domain.notify import NotifyConfig, notify_event

from .base import routed_task


def notify_config(ctx: Any) -> NotifyConfig:
    """``ctx.notify_config`` if the app set one, else TRADEBUS_WEBHOOK_* read once per process."""
    config = getattr(ctx, "notify_config", None)
    if config is None:
        config = ctx.notify_config = NotifyConfig.from_settings(ctx.settings.notify)
    return config


@routed_task(name=NOTIFY_TASK)
def send(self: Any, event_json: str, route: str = "notify") -> dict[str, Any]:
    ctx = self.ctx
    return notify_event(self.event, notify_config(ctx), client=ctx.client, keys=ctx.keys)
