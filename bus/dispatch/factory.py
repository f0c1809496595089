"""The composition root: a bus and its dispatcher, built from settings (the reference README's way)."""

from __future__ import annotations

from typing import Any

from bus.config import Settings
from bus.core.bus import RedisEventBus
from bus.core.dispatching import TaskDispatcher
from bus.dispatch.dispatcher import Dispatcher
from bus.dispatch.routing import Route
from bus.events.registry import load_event_types


class EventBusFactory:
    """Build a bus from settings, as the reference README does."""

    @staticmethod
    def create_from_env(env_config: Settings, **kw: Any) -> RedisEventBus:
        """A bus for ``env_config``; unless ``TRADEBUS_DISPATCH=false`` (or ``dispatcher=`` is given),
        publish() also enqueues the routed Celery tasks on ``CELERY_BROKER_URL``. Redis down raises
        ``BusConnectionError`` (a ``redis.ConnectionError``), unless ``connect=False``: then the bus
        connects on first use (how an executor starts during an outage: its events wait in its outbox)."""
        load_event_types(env_config.event_types_module)  # subscribers decode custom types too
        if "dispatcher" not in kw and env_config.dispatch:
            dispatcher: TaskDispatcher[Route] = Dispatcher.from_settings(env_config)
            kw["dispatcher"] = dispatcher
        return RedisEventBus(settings=env_config, **kw)
