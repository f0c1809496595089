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
        return RedisEventBus(settings=env_config, **with_dispatcher(env_config, kw))


def with_dispatcher(settings: Settings, kw: dict[str, Any]) -> dict[str, Any]:
    """``kw`` with the dispatcher ``settings`` ask for (none when ``TRADEBUS_DISPATCH=false`` or one is
    given), once the custom event types are loaded (subscribers decode them too)."""
    load_event_types(settings.event_types_module)
    if "dispatcher" not in kw and settings.dispatch:
        dispatcher: TaskDispatcher[Route] = Dispatcher.from_settings(settings)
        kw = {**kw, "dispatcher": dispatcher}
    return kw
