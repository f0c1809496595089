"""Event types: the 18 built-in ones (TradeEventType) and the ones users register (CustomEventType).

Values are the channel suffix (``trades:{symbol}:{value}``). Wherever a TradeEventType is accepted, a
registered custom type is too: ``EventType`` is their union, and ``TradeEventType.parse`` resolves both.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from bus.errors import EventValidationError

# A custom type's value: dotted lower-case words, like the built-ins (safe in channels, keys and globs).
CUSTOM_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){1,3}")


class TradeEventType(StrEnum):
    """The 18 event types. Values are the channel suffix (``trades:{symbol}:{value}``)."""

    ORDER_CREATED = "order.created"
    ORDER_FILLED = "order.filled"
    ORDER_PARTIALLY_FILLED = "order.partially_filled"
    ORDER_CANCELLED = "order.cancelled"
    ORDER_REJECTED = "order.rejected"
    ORDER_MODIFIED = "order.modified"
    POSITION_OPENED = "position.opened"
    POSITION_CLOSED = "position.closed"
    POSITION_MODIFIED = "position.modified"
    POSITION_PARTIALLY_CLOSED = "position.partially_closed"
    TRADE_EXECUTED = "trade.executed"
    TRADE_FAILED = "trade.failed"
    RISK_LIMIT_BREACHED = "risk.limit_breached"
    STOP_LOSS_HIT = "risk.stop_loss_hit"
    TAKE_PROFIT_HIT = "risk.take_profit_hit"
    SIGNAL_GENERATED = "signal.generated"
    SIGNAL_VALIDATED = "signal.validated"
    SIGNAL_REJECTED = "signal.rejected"

    @classmethod
    def parse(cls, value: object) -> EventType:
        """Accept a member, its value (``order.created``) or its name (``ORDER_CREATED``), or a
        registered custom type (object, value or name)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            found = (
                cls._value2member_map_.get(value)
                or cls.__members__.get(value.upper())
                or CUSTOM_TYPES.get(value)
                or next((t for t in CUSTOM_TYPES.values() if t.name == value.upper()), None)
            )
            if found is not None:
                return found  # type: ignore[return-value]
        valid = ", ".join([*(m.value for m in cls), *CUSTOM_TYPES])
        raise EventValidationError(
            f"event_type {value!r} is not a known event type; valid: {valid}",
            field="event_type",
            value=value,
        )

    @property
    def is_order(self) -> bool:
        return self in ORDER_TYPES

    @property
    def is_position(self) -> bool:
        return self in POSITION_TYPES


class CustomEventType(str):
    """A user-registered event type (``bus.events.register_event_type``); its value is the string itself.

    Behaves like a TradeEventType member where the bus reads one (``.value``, ``.name``, ``.is_order``).
    Custom types never project onto orders or positions; a registered state effect does their state.
    """

    __slots__ = ()

    @property
    def value(self) -> str:
        return str(self)

    @property
    def name(self) -> str:
        """``funding.rate_changed`` -> ``FUNDING_RATE_CHANGED`` (the built-ins' naming)."""
        return self.upper().replace(".", "_")

    @property
    def is_order(self) -> bool:
        return False

    @property
    def is_position(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<CustomEventType {str(self)!r}>"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        # TradeEvent resolves the type before field validation; here only the instance is checked
        return core_schema.is_instance_schema(cls)


EventType = TradeEventType | CustomEventType

#: value -> the registered custom type (filled by bus.events.registry.register_event_type)
CUSTOM_TYPES: dict[str, CustomEventType] = {}

ORDER_TYPES = frozenset(t for t in TradeEventType if t.value.startswith("order."))
POSITION_TYPES = frozenset(t for t in TradeEventType if t.value.startswith("position."))
