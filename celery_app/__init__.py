"""The Celery app: ``celery -A celery_app worker`` / ``celery -A celery_app beat``.

The module-level ``app`` is built on first access from the environment / ``.env``
(``bus.config.LoadEnvironmentVariables``); tests and tools build their own with ``make_celery(settings)``.
Your own routed tasks: ``@celery_app.routed_task`` in a module named by TRADEBUS_TASK_MODULES.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bus.config import LoadEnvironmentVariables, Settings
from bus.dispatch.routing import MAX_BACKOFF_SECONDS, RoutingTable
from bus.events.registry import load_event_types

from .config import REDELIVERY_CAP, VISIBILITY_TIMEOUT, celery_config

if TYPE_CHECKING:
    from celery import Celery

    app: Celery  # built on first access by __getattr__ below

__all__ = ["app", "make_celery", "routed_task", "routing_from_settings"]


def routing_from_settings(settings: Settings) -> RoutingTable:
    return RoutingTable.from_file(settings.routes_file) if settings.routes_file else RoutingTable.default()


def make_celery(
    settings: Settings | None = None,
    routing: RoutingTable | None = None,
    *,
    redelivery_cap: int = REDELIVERY_CAP,
    set_as_current: bool = True,
    **overrides: Any,
) -> Celery:
    """A Celery app for ``settings`` with every tradebus task registered. Raises RoutingError early.

    tradebus's configuration is the app's lowest layer (celery_app.application): ``overrides``, and later
    ``app.config_from_object(...)`` or ``app.conf.update(...)``, win over it."""
    from celery import signals

    from .application import TradebusCelery
    from .context import TaskContext, on_worker_process_init, on_worker_process_shutdown
    from .observability import on_setup_logger, on_worker_init, on_worker_process_exit
    from .startup import routes_at_worker_init
    from .tasks import import_task_modules
    from .transport import register

    settings = settings if settings is not None else LoadEnvironmentVariables()
    load_event_types(settings.event_types_module)  # before routes are checked and events decoded
    routing = routing if routing is not None else routing_from_settings(settings)
    register()  # redis:// and rediss:// brokers: celery_app.transport, under their plain scheme
    import_task_modules()  # shared tasks: registered on every app, this one included
    defaults = celery_config(settings, routing)
    beat = _beat_schedule(settings)
    if beat:
        defaults["beat_schedule"] = beat
    app = TradebusCelery("tradebus", defaults, set_as_current=set_as_current)
    if overrides:
        app.conf.update(overrides)
    # Countdowns up to MAX_BACKOFF_SECONDS: held messages are refreshed (celery_app.heartbeat), and kombu's own
    # transport (redis+socket://) keeps a visibility timeout of twice that (celery_app.config).
    app.tradebus = TaskContext(settings, routing, redelivery_cap, min(MAX_BACKOFF_SECONDS, VISIBILITY_TIMEOUT / 2))  # type: ignore[attr-defined]
    signals.worker_process_init.connect(on_worker_process_init, weak=False, dispatch_uid="tradebus-init")
    signals.worker_process_shutdown.connect(on_worker_process_shutdown, weak=False, dispatch_uid="tradebus-shutdown")
    signals.after_setup_logger.connect(on_setup_logger, weak=False, dispatch_uid="tradebus-log-format")
    signals.after_setup_task_logger.connect(on_setup_logger, weak=False, dispatch_uid="tradebus-task-log-format")
    signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid="tradebus-metrics")
    signals.worker_process_shutdown.connect(on_worker_process_exit, weak=False, dispatch_uid="tradebus-metrics-exit")
    signals.worker_init.connect(routes_at_worker_init, weak=False, dispatch_uid="tradebus-routes")
    return app


def _beat_schedule(settings: Settings) -> dict[str, Any]:
    import importlib

    try:
        beat = importlib.import_module(f"{__name__}.beat")  # the schedule, kept as data
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.beat":
            raise
        return {}
    fn = getattr(beat, "beat_schedule", None)
    return fn(settings) if callable(fn) else dict(getattr(beat, "BEAT_SCHEDULE", {}))


def __getattr__(name: str) -> Any:
    if name == "routed_task":
        from .tasks.base import routed_task

        return routed_task
    if name in ("app", "celery"):
        global app
        app = make_celery()
        return app
    raise AttributeError(name)
