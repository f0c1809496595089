"""tradebus: a Celery-integrated event bridge for trading systems.

``import bus`` is cheap: it imports neither Celery nor opens a connection.
"""

from .channels import Keys, channel, validate_symbol
from .config import LoadEnvironmentVariables, Settings
from .errors import (
    BusConnectionError,
    BusError,
    ConfigError,
    DispatchError,
    EventValidationError,
    RoutingError,
)
from .events import TradeEvent, TradeEventType
from .redis_bus import EventBusFactory, PublishReceipt, RedisEventBus

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
