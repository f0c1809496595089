"""TradeEventType: the 18 event types; values are the channel suffix."""

from __future__ import annotations

from enum import StrEnum

from bus.errors import EventValidationError


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
    def parse(cls, value: object) -> TradeEventType:
        """Accept a member, its value (``order.created``) or its name (``ORDER_CREATED``)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            found = cls._value2member_map_.get(value) or cls.__members__.get(value.upper())
            if found is not None:
                return found  # type: ignore[return-value]
        valid = ", ".join(m.value for m in cls)
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


ORDER_TYPES = frozenset(t for t in TradeEventType if t.value.startswith("order."))
POSITION_TYPES = frozenset(t for t in TradeEventType if t.value.startswith("position."))
