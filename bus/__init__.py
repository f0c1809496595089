"""tradebus: a Celery-integrated event bridge for trading systems.

``import bus`` is cheap: the public names below are loaded on first use (PEP 562), so importing the
package (or ``bus.errors``) pulls in neither redis, pydantic-settings nor Celery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names resolve to, for type checkers and IDEs
    from bus.config import LoadEnvironmentVariables, Settings
    from bus.core.bus import PublishReceipt, RedisEventBus
    from bus.core.keys import Keys, channel
    from bus.core.subscription import LostEvents
    from bus.demo.errors import DemoError
    from bus.dispatch.factory import EventBusFactory
    from bus.domain.lease import StaleTokenError
    from bus.domain.notify import NotifyError
    from bus.errors import (
        BusConnectionError,
        BusError,
        BusPermissionError,
        ConfigError,
        DispatchError,
        EventValidationError,
        RoutingError,
        SchemaVersionError,
    )
    from bus.events import Payload, TradeEvent, TradeEventType, register_event_type
    from bus.events.rules import validate_symbol
    from bus.executor.outbox import OutboxFull, OutboxLocked

#: public name -> the module that defines it
_EXPORTS = {
    # Events
    "TradeEvent": "bus.events",
    "TradeEventType": "bus.events",
    "Payload": "bus.events",
    "register_event_type": "bus.events",
    "validate_symbol": "bus.events.rules",
    # Bus
    "RedisEventBus": "bus.core.bus",
    "PublishReceipt": "bus.core.bus",
    "LostEvents": "bus.core.subscription",
    "EventBusFactory": "bus.dispatch.factory",
    # Configuration and naming
    "LoadEnvironmentVariables": "bus.config",
    "Settings": "bus.config",
    "Keys": "bus.core.keys",
    "channel": "bus.core.keys",
    # Errors
    "BusError": "bus.errors",
    "BusConnectionError": "bus.errors",
    "BusPermissionError": "bus.errors",
    "ConfigError": "bus.errors",
    "DispatchError": "bus.errors",
    "EventValidationError": "bus.errors",
    "RoutingError": "bus.errors",
    "SchemaVersionError": "bus.errors",
    # ...and the subclasses the subpackages add
    "StaleTokenError": "bus.domain.lease",
    "NotifyError": "bus.domain.notify",
    "OutboxFull": "bus.executor.outbox",
    "OutboxLocked": "bus.executor.outbox",
    "DemoError": "bus.demo.errors",
}

__all__ = [
    # Events
    "TradeEvent",
    "TradeEventType",
    "Payload",
    "register_event_type",
    "validate_symbol",
    # Bus
    "RedisEventBus",
    "EventBusFactory",
    "PublishReceipt",
    "LostEvents",
    # Configuration and naming
    "LoadEnvironmentVariables",
    "Settings",
    "Keys",
    "channel",
    # Errors
    "BusError",
    "BusConnectionError",
    "BusPermissionError",
    "ConfigError",
    "DispatchError",
    "EventValidationError",
    "RoutingError",
    "SchemaVersionError",
    "StaleTokenError",
    "NotifyError",
    "OutboxFull",
    "OutboxLocked",
    "DemoError",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bus' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
