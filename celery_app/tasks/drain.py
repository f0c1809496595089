"""Log-route tasks (bus/dispatch/logroutes): the drain a wake-up runs, beat's wake job, replay.

``tradebus.logroute.drain(route, symbol, token=None)`` runs on the route's queue. Its lease token is the
task id, so a message redelivered after its worker died takes its own lease back at once; a drain that
spent its time budget, or waits out an effect's backoff, re-enqueues itself with the same token.
``tradebus.logroute.wake`` (beat) wakes the groups that have entries waiting and no drainer.
``tradebus.logroute.replay(route, symbol, start, end)`` re-applies a range (``tradebus replay --log-route``).
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

import redis
from celery import Task, shared_task
from redis.exceptions import ClusterDownError

from bus.dispatch.logroutes import drain as drains
from bus.dispatch.logroutes.config import LogRouteConfig
from bus.dispatch.logroutes.effects import RISK_EFFECT, Batch, effect_for, register_effect
from bus.dispatch.logroutes.monitor import route_lag, stale
from bus.dispatch.logroutes.replay import LeaseBusyError, LogRouteError, replay_range
from bus.dispatch.names import DRAIN_TASK, REPLAY_TASK, WAKE_TASK
from bus.dispatch.routing import LOG
from bus.domain.risklog import check_batch
from bus.errors import EventValidationError
from bus.events.rules import validate_symbol

from .base import TradebusTask
from .risk import event_bus, risk_limits

log = logging.getLogger(__name__)

#: a drain that lost Redis (or its slot's master) tries again this often, backing off from the base to the cap
DRAIN_CONNECTION_RETRIES = 8
DRAIN_RETRY_BASE, DRAIN_RETRY_CAP = 0.25, 5.0


def log_route_config(ctx: Any) -> LogRouteConfig:
    """``ctx.log_routes`` if the app set one, else TRADEBUS_LOGROUTE_* (``settings.log_routes``)."""
    config = getattr(ctx, "log_routes", None)
    if config is None:
        config = ctx.log_routes = LogRouteConfig.from_settings(ctx.settings.log_routes)
    return config


@register_effect(RISK_EFFECT)
def check_risk(batch: Batch) -> None:
    check_batch(batch, risk_limits(batch.context))


class LogRouteTask(TradebusTask):
    """No event envelope to decode: called with (route, ...); keeps the per-process context. Counted as a
    run of its route in the stats and, when metrics are on, in Prometheus (one per drain, not per entry)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.request.tradebus_started = perf_counter()
        result = Task.__call__(self, *args, **kwargs)
        route = args[0] if args else kwargs.get("route")
        done = result if isinstance(result, dict) else {}
        self.count_run(route if isinstance(route, str) else None, done.get("applied", 0), done.get("latency_ms", 0))
        self.observe("run", route if isinstance(route, str) else None)
        return result


def _log_route(ctx: Any, route: Any, symbol: Any) -> Any:
    """The log route named ``route``, or None (logged) for arguments no publish would send."""
    r = ctx.routing.get(route) if isinstance(route, str) else None
    try:
        validate_symbol(symbol)
    except EventValidationError as e:
        log.error("log route task for %r: %s", route, e)
        return None
    if r is None or r.mode != LOG:
        log.error("log route task for %r on %s: not a log route of this worker's routing table", route, symbol)
        return None
    return r


@shared_task(name=DRAIN_TASK, base=LogRouteTask, bind=True)
def drain(self: Any, route: str, symbol: str, token: str | None = None) -> dict[str, Any]:
    ctx = self.ctx
    r = _log_route(ctx, route, symbol)
    if r is None:
        return {"status": "refused"}
    drainer = drains.Drainer(ctx.client, ctx.keys, r, symbol, effect_for(r), config=log_route_config(ctx),
                             context=ctx, publisher=event_bus(self).publisher)  # fmt: skip
    try:
        out = drainer.run(token or self.request.id)
    except (redis.ConnectionError, redis.TimeoutError) as e:
        # Redis is down, or (a Cluster failover) the symbol's slot moved: nothing of the batch in flight
        # committed; drain again with the same token (the task id) once the slot answers. Past the cap the
        # task fails and beat's wake job covers the group (its lease expires).
        countdown = min(DRAIN_RETRY_BASE * 2**self.request.retries, DRAIN_RETRY_CAP)
        raise self.retry(exc=e, countdown=countdown, max_retries=DRAIN_CONNECTION_RETRIES) from e
    if out.status in (drains.MORE, drains.RETRY):  # the same lease token: nothing overtakes the chain
        self.apply_async((route, symbol), {"token": out.token}, queue=r.queue, priority=r.priority,
                         countdown=out.countdown or None)  # fmt: skip
    return {"status": out.status, "acked": out.acked, "dead_lettered": out.dead_lettered, "applied": out.applied,
            "latency_ms": out.latency_ms}  # fmt: skip


@shared_task(name=WAKE_TASK, base=LogRouteTask, bind=True)
def wake(self: Any) -> dict[str, Any]:
    """Beat's safety net: send a drain to every group with entries waiting and no drainer."""
    ctx = self.ctx
    config = log_route_config(ctx)
    woken = []
    try:
        lags = route_lag(ctx.client, ctx.keys, ctx.routing)
    except (redis.ConnectionError, redis.TimeoutError, ClusterDownError) as e:
        # Redis (or a Cluster master) is down: the next tick looks again; no traceback every tick of an outage
        log.warning("log route wake job: Redis did not answer (%s: %s); the next tick tries again", type(e).__name__, e)
        return {"woken": [], "unreachable": True}
    for g in stale(lags, config.wake_grace_ms):
        r = ctx.routing.get(g.route)
        ctx.client.set(ctx.keys.wake_flag(g.route, g.symbol), "1", px=config.flag_ttl_ms)
        self.app.send_task(DRAIN_TASK, args=[g.route, g.symbol], queue=r.queue, priority=r.priority)
        woken.append(f"{g.route}/{g.symbol}")
    if woken:
        log.warning("woke %d log route group(s) with entries waiting and no drainer: %s", len(woken), woken[:10])
    return {"woken": woken}


@shared_task(name=REPLAY_TASK, base=LogRouteTask, bind=True)
def replay(self: Any, route: str, symbol: str, start: str = "-", end: str = "+") -> dict[str, Any]:
    ctx = self.ctx
    r = _log_route(ctx, route, symbol)
    if r is None:
        return {"replayed": 0, "refused": "not a log route"}
    try:
        n = replay_range(ctx.client, ctx.keys, r, symbol, effect_for(r), start=start, end=end, token=self.request.id,
                         config=log_route_config(ctx), context=ctx, publisher=event_bus(self).publisher)  # fmt: skip
    except LeaseBusyError:  # a drain is running: come back when it may be done
        self.apply_async((route, symbol, start, end), queue=r.queue, countdown=1.0)
        return {"replayed": 0, "later": True}
    except LogRouteError as e:
        log.error("replay of %s/%s refused: %s", route, symbol, e)
        return {"replayed": 0, "refused": str(e)}
    # publishes during the replay found a wake-up pending (a drain the lease turned away): resume the route
    self.app.send_task(DRAIN_TASK, args=[route, symbol], queue=r.queue, priority=r.priority)
    log.warning("replayed %d log entries of %s through log route %s (%s..%s)", n, symbol, route, start, end)
    return {"replayed": n}
