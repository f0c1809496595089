"""The asyncio bus and its dispatcher, built from settings (as ``EventBusFactory`` builds the blocking one)."""

from __future__ import annotations

from typing import Any

from bus.aio.bus import AsyncRedisEventBus
from bus.config import Settings
from bus.dispatch.factory import with_dispatcher


class AsyncEventBusFactory:
    """Build an asyncio bus from settings."""

    @staticmethod
    def create_from_env(env_config: Settings, **kw: Any) -> AsyncRedisEventBus:
        """An asyncio bus for ``env_config``; unless ``TRADEBUS_DISPATCH=false`` (or ``dispatcher=`` is
        given), publish() also enqueues the routed Celery tasks on ``CELERY_BROKER_URL``. No I/O:
        ``async with`` the bus (or ``await bus.connect()``) checks that Redis answers."""
        return AsyncRedisEventBus(settings=env_config, **with_dispatcher(env_config, kw))
