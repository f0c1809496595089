"""Reconciliation tasks, run by beat: ``tradebus.reconcile.<job>``; each runs under a lease
(bus.reconcile.run_job) and returns its JSON report.

Called without an event, so they skip the base task's envelope decoding but keep its per-process
context (``self.ctx``). No retries: the next beat tick is the retry.
"""

from __future__ import annotations

import importlib
from typing import Any

from celery import Task, shared_task

from bus.domain import reconcile
from celery_app import beat

from .base import TradebusTask


class ReconcileTask(TradebusTask):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = Task.__call__(self, *args, **kwargs)
        self.count("run")
        return result


def reconcile_config(ctx: Any) -> reconcile.ReconcileConfig:
    config = getattr(ctx, "reconcile_config", None)
    if config is None:
        config = ctx.reconcile_config = reconcile.ReconcileConfig.from_settings(ctx.settings.reconcile)
    return config


def positions_source(ctx: Any) -> Any:
    """``ctx.broker`` if set, else TRADEBUS_BROKER_FACTORY=``module:callable`` returning one (or None)."""
    broker = getattr(ctx, "broker", None)
    if broker is None:
        spec = ctx.settings.reconcile.broker_factory
        if spec:
            module, _, name = spec.partition(":")
            broker = ctx.broker = getattr(importlib.import_module(module), name)()
    return broker


def _run(task: Any, name: str, fn: Any) -> dict[str, Any]:
    ctx = task.ctx
    cfg = reconcile_config(ctx)
    return reconcile.run_job(
        ctx.client,
        ctx.keys,
        name,
        fn,
        min_interval_s=beat.job(name, ctx.settings.beat).min_gap,
        ttl_ms=cfg.lease_ttl_ms,
    )


def _task(name: str) -> Any:
    return shared_task(name=f"tradebus.reconcile.{name}", base=ReconcileTask, bind=True)


@_task("redispatch")
def redispatch(self: Any) -> dict[str, Any]:
    from bus.dispatch.dispatcher import Dispatcher

    ctx = self.ctx

    def job(token: int, heartbeat: Any) -> dict[str, Any]:
        d = Dispatcher(ctx.settings.broker_url, ctx.routing, settings=ctx.settings, app=self.app)
        d.attach(ctx.client, ctx.keys)
        try:
            return reconcile.redispatch(d, grace_s=reconcile_config(ctx).redispatch_grace)
        finally:
            d.close()

    return _run(self, "redispatch", job)


@_task("rebuild")
def rebuild(self: Any) -> dict[str, Any]:
    ctx = self.ctx
    return _run(
        self,
        "rebuild",
        lambda token, hb: reconcile.rebuild(
            ctx.client,
            ctx.keys,
            token=token,
            grace_s=reconcile_config(ctx).rebuild_grace,
            heartbeat=hb,
            retention=ctx.settings.state_retention,
        ),
    )


@_task("stale_orders")
def stale_orders(self: Any) -> dict[str, Any]:
    ctx = self.ctx
    return _run(
        self,
        "stale_orders",
        lambda token, hb: reconcile.flag_stale_orders(
            ctx.client, ctx.keys, max_age_s=reconcile_config(ctx).stale_order_age, token=token
        ),
    )


@_task("broker")
def broker(self: Any) -> dict[str, Any]:
    ctx = self.ctx
    source = positions_source(ctx)
    if source is None:
        return {"job": "broker", "ran": False, "reason": "no broker configured (TRADEBUS_BROKER_FACTORY)"}
    return _run(self, "broker", lambda token, hb: reconcile.reconcile_broker(ctx.client, ctx.keys, source))


@_task("trim")
def trim(self: Any) -> dict[str, Any]:
    ctx = self.ctx
    cfg = reconcile_config(ctx)
    if cfg.log_retention is None and cfg.log_maxlen is None:
        return {"job": "trim", "ran": False, "reason": "no retention configured (TRADEBUS_RECONCILE_LOG_*)"}
    return _run(
        self,
        "trim",
        lambda token, hb: reconcile.trim_logs(
            ctx.client, ctx.keys, token=token, retention_s=cfg.log_retention, maxlen=cfg.log_maxlen
        ),
    )
