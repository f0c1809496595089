"""tradebus: a Celery-integrated event bridge for trading systems.

``import bus`` is cheap: it imports neither Celery nor opens a connection.
"""

from bus.config import LoadEnvironmentVariables, Settings
from bus.core.bus import EventBusFactory, PublishReceipt, RedisEventBus
from bus.core.keys import Keys, channel, validate_symbol
from bus.errors import (
    BusConnectionError,
    BusError,
    ConfigError,
    DispatchError,
    EventValidationError,
    RoutingError,
)
from bus.events.model import TradeEvent, TradeEventType

__all__ = [
    # Events
    "TradeEvent",
    "TradeEventType",
    # Bus
    "RedisEventBus",
    "EventBusFactory",
    "PublishReceipt",
    # Configuration and naming
    "LoadEnvironmentVariables",
    "Settings",
    "Keys",
    "channel",
    "validate_symbol",
    # Errors
    "BusError",
    "BusConnectionError",
    "ConfigError",
    "DispatchError",
    "EventValidationError",
    "RoutingError",
]
