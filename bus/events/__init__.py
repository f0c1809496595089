"""The event model: the 18 types, the TradeEvent envelope, its validation rules and create_* helpers."""

from bus.events.model import TradeEvent
from bus.events.types import TradeEventType

__all__ = ["TradeEvent", "TradeEventType"]
