"""The event model: event types (18 built-in, more registered), the TradeEvent envelope, the payload
models that validate ``data``, and the create_* helpers."""

from bus.events.model import TradeEvent
from bus.events.payloads import Payload
from bus.events.registry import EventSpec, register_event_type
from bus.events.types import CustomEventType, EventType, TradeEventType

__all__ = [
    "CustomEventType",
    "EventSpec",
    "EventType",
    "Payload",
    "TradeEvent",
    "TradeEventType",
    "register_event_type",
]
