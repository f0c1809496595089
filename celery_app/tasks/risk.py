"""Risk task: evaluate the event against the limits; publish each new breach once (bus.risk)."""

from __future__ import annotations

import os
from typing import Any

from bus.dispatch.names import RISK_TASK
from bus.domain.risk import RiskLimits, check_event

from .base import routed_task


def risk_limits(ctx: Any) -> RiskLimits:
    """``ctx.risk_limits`` if the app set one, else TRADEBUS_RISK_* read once per process."""
    limits = getattr(ctx, "risk_limits", None)
    if limits is None:
        limits = ctx.risk_limits = RiskLimits.from_settings(ctx.settings.risk)
    return limits


def event_bus(task: Any) -> Any:
    """One RedisEventBus per worker process, routing through this app (breaches reach notify)."""
    ctx = task.ctx
    cached = getattr(ctx, "event_bus", None)
    if cached is not None and cached[0] == os.getpid():
        return cached[1]
    from bus.core.bus import RedisEventBus
    from bus.dispatch.dispatcher import Dispatcher

    s = ctx.settings
    dispatcher = Dispatcher(s.broker_url, ctx.routing, settings=s, app=task.app)
    bus = RedisEventBus(client=ctx.client, settings=s, key_prefix=ctx.keys.prefix, dispatcher=dispatcher)
    ctx.event_bus = (os.getpid(), bus)
    return bus


@routed_task(name=RISK_TASK)
def check(self: Any, event_json: str, route: str = "risk") -> dict[str, Any]:
    ctx = self.ctx
    breaches = check_event(
        ctx.client, ctx.keys, self.event, risk_limits(ctx), event_bus(self).publish, ctx.settings.state_retention
    )
    return {"event_id": self.event.event_id, "breaches": [b.to_dict() for b in breaches]}
