"""The payload (``data``) of each built-in event type, as a pydantic model: the contract other services read.

``Payload`` declares the fields that mean the same thing in every event type (ids, prices, volumes, pnl,
side / direction / order type); each type's model adds what it requires (``order_id`` for order events,
``position_id`` for position events) and the fields its ``create_*`` helper names. Any other field is
kept as given (``extra="allow"``). Custom event types may subclass ``Payload`` to inherit its rules.

Required fields are exactly the ones the bus has always required, so events already in a log stay
readable; the rest are optional. Each rule's error text is given beside it (``Explain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from bus.events.types import TradeEventType


@dataclass(frozen=True, eq=False)  # hashed by identity: typing hashes Annotated metadata
class Explain:
    """How a failed check of a field reads in EventValidationError: pydantic error type -> message."""

    messages: dict[str, str]


class Quantity(StrEnum):
    """What a number field measures (the projection stores prices and volumes as exact decimals)."""

    PRICE = "price"
    VOLUME = "volume"


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class Direction(StrEnum):
    LONG = "LONG"
    SHORT = "SHORT"


class OrderType(StrEnum):
    BUY = "BUY"
    BUY_LIMIT = "BUY_LIMIT"
    BUY_STOP = "BUY_STOP"
    SELL = "SELL"
    SELL_LIMIT = "SELL_LIMIT"
    SELL_STOP = "SELL_STOP"


def _int_as_text(value: Any) -> Any:
    return str(value) if type(value) is int else value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _one_of(enum: type[StrEnum]) -> Explain:
    return Explain({"enum": f"must be one of {', '.join(sorted(enum))}"})


_NUMBER = {"float_type": "must be a number", "finite_number": "numbers must be finite"}
# Ids become part of Redis key names: no separators, globs, braces or spaces.
ENTITY_ID_PATTERN = r"^[^\s:*?\[\]{}|]{1,128}$"

EntityId = Annotated[
    str,
    Field(strict=True, pattern=ENTITY_ID_PATTERN, description="An id (integers are accepted and stored as text)."),
    BeforeValidator(_int_as_text),
    Explain(
        {
            "string_type": "must be a string or an integer",
            "string_pattern_mismatch": "must be 1-128 characters without ':*?[]{}|' or spaces",
        }
    ),
]
_POSITIVE = Field(strict=True, gt=0, allow_inf_nan=False)
Price = Annotated[float, _POSITIVE, Explain({**_NUMBER, "greater_than": "must be > 0"}), Quantity.PRICE]
Volume = Annotated[float, _POSITIVE, Explain({**_NUMBER, "greater_than": "must be > 0"}), Quantity.VOLUME]
Amount = Annotated[float, Field(strict=True, allow_inf_nan=False), Explain(_NUMBER)]
SideField = Annotated[Side, BeforeValidator(_upper), _one_of(Side)]
DirectionField = Annotated[Direction, BeforeValidator(_upper), _one_of(Direction)]
OrderTypeField = Annotated[OrderType, BeforeValidator(_upper), _one_of(OrderType)]


def _text(description: str) -> Any:
    # Free-form fields are not checked (events already logged carry whatever was sent); text by convention.
    return Field(None, description=f"{description} (text by convention; not checked)")


class Payload(BaseModel):
    """Fields with one meaning in every event type, checked wherever they appear; others are kept as given."""

    model_config = ConfigDict(extra="allow", regex_engine="python-re")

    order_id: EntityId | None = None
    position_id: EntityId | None = None
    trade_id: EntityId | None = None
    signal_id: EntityId | None = None
    order_type: OrderTypeField | None = Field(None, description="Case-insensitive on input, stored upper-case.")
    side: SideField | None = Field(None, description="Case-insensitive on input, stored upper-case.")
    direction: DirectionField | None = Field(None, description="Case-insensitive on input, stored upper-case.")
    price: Price | None = None
    entry_price: Price | None = None
    exit_price: Price | None = None
    fill_price: Price | None = None
    sl: Price | None = Field(None, description="Stop-loss price.")
    tp: Price | None = Field(None, description="Take-profit price.")
    stop_loss: Price | None = None
    take_profit: Price | None = None
    entry: Price | None = None
    volume: Volume | None = None
    fill_volume: Volume | None = None
    closed_volume: Volume | None = None
    filled_volume: Volume | None = None
    remaining_volume: Volume | None = None
    pnl: Amount | None = Field(None, description="Profit or loss; may be negative.")


# --- order events: order_id required ---------------------------------------------------------------


class OrderPayload(Payload):
    order_id: EntityId


class OrderCreated(OrderPayload):
    """An order was placed. ``create_order_created`` sets order_type, price and volume."""


class OrderFilled(OrderPayload):
    """An order filled completely. ``create_order_filled`` sets fill_price and volume."""


class OrderPartiallyFilled(OrderPayload):
    """Part of an order filled. ``create_order_partially_filled`` sets fill_price and fill_volume."""


class OrderCancelled(OrderPayload):
    """An order was cancelled."""

    reason: Any = _text("Why it was cancelled")


class OrderRejected(OrderPayload):
    """The venue refused an order. ``create_order_rejected`` sets reason."""

    reason: Any = _text("Why it was rejected")


class OrderModified(OrderPayload):
    """An order's fields changed; the changed fields travel beside order_id."""


# --- position events: position_id required ---------------------------------------------------------


class PositionPayload(Payload):
    position_id: EntityId


class PositionOpened(PositionPayload):
    """A position opened. ``create_position_opened`` sets entry_price, volume and direction."""


class PositionClosed(PositionPayload):
    """A position closed. ``create_position_closed`` sets exit_price and pnl."""


class PositionModified(PositionPayload):
    """A position's fields changed (sl, tp...); the changed fields travel beside position_id."""


class PositionPartiallyClosed(PositionPayload):
    """Part of a position closed. ``create_position_partially_closed`` sets exit_price, closed_volume, pnl."""


# --- the others --------------------------------------------------------------------------------------


class TradeExecuted(Payload):
    """A trade executed. ``create_trade_executed`` sets trade_id, side, price and volume."""


class TradeFailed(Payload):
    """A trade failed. ``create_trade_failed`` sets reason (and trade_id when known)."""

    reason: Any = _text("Why it failed")


class RiskLimitBreached(Payload):
    """A risk rule was breached. ``create_risk_limit_breached`` sets rule, limit and value."""

    rule: Any = _text("The rule's name")
    limit: Any = Field(None, description="The rule's limit (a number by convention; not checked)")
    value: Any = Field(None, description="The value that breached it (a number by convention; not checked)")


class StopLossHit(Payload):
    """A position's stop-loss was hit. ``create_stop_loss_hit`` sets position_id and price."""


class TakeProfitHit(Payload):
    """A position's take-profit was hit. ``create_take_profit_hit`` sets position_id and price."""


class SignalGenerated(Payload):
    """A strategy produced a signal. ``create_signal_generated`` sets signal_id, direction and strategy."""

    strategy: Any = _text("The strategy's name")


class SignalValidated(Payload):
    """A signal passed validation. ``create_signal_validated`` sets signal_id."""


class SignalRejected(Payload):
    """A signal was refused. ``create_signal_rejected`` sets signal_id and reason."""

    reason: Any = _text("Why it was refused")


T = TradeEventType
BUILTIN_PAYLOADS: dict[TradeEventType, type[Payload]] = {
    T.ORDER_CREATED: OrderCreated,
    T.ORDER_FILLED: OrderFilled,
    T.ORDER_PARTIALLY_FILLED: OrderPartiallyFilled,
    T.ORDER_CANCELLED: OrderCancelled,
    T.ORDER_REJECTED: OrderRejected,
    T.ORDER_MODIFIED: OrderModified,
    T.POSITION_OPENED: PositionOpened,
    T.POSITION_CLOSED: PositionClosed,
    T.POSITION_MODIFIED: PositionModified,
    T.POSITION_PARTIALLY_CLOSED: PositionPartiallyClosed,
    T.TRADE_EXECUTED: TradeExecuted,
    T.TRADE_FAILED: TradeFailed,
    T.RISK_LIMIT_BREACHED: RiskLimitBreached,
    T.STOP_LOSS_HIT: StopLossHit,
    T.TAKE_PROFIT_HIT: TakeProfitHit,
    T.SIGNAL_GENERATED: SignalGenerated,
    T.SIGNAL_VALIDATED: SignalValidated,
    T.SIGNAL_REJECTED: SignalRejected,
}
