"""State task: the projection of bus/core/state.py, run by a worker. Idempotent (effectively-once
effects): a redelivered or re-dispatched event changes nothing the second time."""

from __future__ import annotations

import time
from typing import Any

from bus.core import state
from bus.core.scripts import execute_pipeline
from bus.dispatch.names import STATE_TASK

from .base import routed_task


@routed_task(name=STATE_TASK)
def apply(self: Any, event_json: str, route: str = "state") -> dict[str, Any]:
    ctx = self.ctx
    pipe = ctx.client.pipeline(transaction=False)
    # now: a task may run long after the publish (retries, re-dispatch, dead-letter replay)
    if not state.stage_apply(pipe, ctx.keys, self.event, retention=ctx.settings.state_retention, now=time.time()):
        return {"changed": False, "reason": "not a state event"}
    self.count("run", pipe)  # the counter shares the projection's round trip
    self.request.tradebus_counted = True
    results = execute_pipeline(pipe, (state.SCRIPT,))
    failed = next((r for r in results if isinstance(r, Exception)), None)  # a custom effect queues several
    if failed is not None:
        raise failed
    if not state.is_entity_event(self.event):
        return {"changed": bool(results[0])}
    if results[0] == state.REFUSED_LATE:
        return {"changed": False, "reason": "older than the state retention and its entity is unknown (expired)"}
    return {"changed": results[0] == state.APPLIED}
