"""The ``TradeEvent.create_<type>`` helpers: one per event type, required fields as arguments.

Extra keyword arguments are kept in ``data`` (the reference's ``sl=``, ``tp=``); ``correlation_id``,
``causation_id``, ``source``, ``timestamp`` and ``event_id`` go to the envelope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from bus.events.types import EventType, TradeEventType

_ENVELOPE = ("correlation_id", "causation_id", "source", "timestamp", "event_id")


class EventHelpers:
    """Mixed into TradeEvent: every helper builds ``cls`` from keyword fields."""

    if TYPE_CHECKING:
        # what the helpers need of the class they are mixed into (TradeEvent's constructor)
        def __init__(self, **fields: Any) -> None: ...

    @classmethod
    def create(cls, event_type: EventType | str, symbol: str, **fields: Any) -> Self:
        """An event of any type, built-in or registered, by name or value: ``create("funding.rate_changed",
        "XAUUSD", rate=0.0001)``. Keywords go to ``data``, except the envelope's (``correlation_id``...)."""
        return cls._create(TradeEventType.parse(event_type), symbol, {}, fields)

    @classmethod
    def _create(
        cls,
        event_type: EventType,
        symbol: str,
        fields: dict[str, Any],
        extra: dict[str, Any],
    ) -> Self:
        meta = {k: extra.pop(k) for k in _ENVELOPE if k in extra}
        data = {k: v for k, v in fields.items() if v is not None}
        data.update(extra)
        return cls(event_type=event_type, symbol=symbol, data=data, **meta)

    @classmethod
    def create_order_created(
        cls, symbol: str, order_id: str, order_type: str, price: float, volume: float, **extra: Any
    ) -> Self:
        f = {"order_id": order_id, "order_type": order_type, "price": price, "volume": volume}
        return cls._create(TradeEventType.ORDER_CREATED, symbol, f, extra)

    @classmethod
    def create_order_filled(cls, symbol: str, order_id: str, fill_price: float, volume: float, **extra: Any) -> Self:
        f = {"order_id": order_id, "fill_price": fill_price, "volume": volume}
        return cls._create(TradeEventType.ORDER_FILLED, symbol, f, extra)

    @classmethod
    def create_order_partially_filled(
        cls, symbol: str, order_id: str, fill_price: float, fill_volume: float, **extra: Any
    ) -> Self:
        f = {"order_id": order_id, "fill_price": fill_price, "fill_volume": fill_volume}
        return cls._create(TradeEventType.ORDER_PARTIALLY_FILLED, symbol, f, extra)

    @classmethod
    def create_order_cancelled(cls, symbol: str, order_id: str, reason: str | None = None, **extra: Any) -> Self:
        return cls._create(TradeEventType.ORDER_CANCELLED, symbol, {"order_id": order_id, "reason": reason}, extra)

    @classmethod
    def create_order_rejected(cls, symbol: str, order_id: str, reason: str, **extra: Any) -> Self:
        return cls._create(TradeEventType.ORDER_REJECTED, symbol, {"order_id": order_id, "reason": reason}, extra)

    @classmethod
    def create_order_modified(cls, symbol: str, order_id: str, **changes: Any) -> Self:
        return cls._create(TradeEventType.ORDER_MODIFIED, symbol, {"order_id": order_id}, changes)

    @classmethod
    def create_position_opened(
        cls,
        symbol: str,
        position_id: str,
        entry_price: float,
        volume: float,
        direction: str,
        **extra: Any,
    ) -> Self:
        f = {
            "position_id": position_id,
            "entry_price": entry_price,
            "volume": volume,
            "direction": direction,
        }
        return cls._create(TradeEventType.POSITION_OPENED, symbol, f, extra)

    @classmethod
    def create_position_closed(cls, symbol: str, position_id: str, exit_price: float, pnl: float, **extra: Any) -> Self:
        f = {"position_id": position_id, "exit_price": exit_price, "pnl": pnl}
        return cls._create(TradeEventType.POSITION_CLOSED, symbol, f, extra)

    @classmethod
    def create_position_modified(cls, symbol: str, position_id: str, **changes: Any) -> Self:
        return cls._create(TradeEventType.POSITION_MODIFIED, symbol, {"position_id": position_id}, changes)

    @classmethod
    def create_position_partially_closed(
        cls,
        symbol: str,
        position_id: str,
        exit_price: float,
        closed_volume: float,
        pnl: float,
        **extra: Any,
    ) -> Self:
        f = {
            "position_id": position_id,
            "exit_price": exit_price,
            "closed_volume": closed_volume,
            "pnl": pnl,
        }
        return cls._create(TradeEventType.POSITION_PARTIALLY_CLOSED, symbol, f, extra)

    @classmethod
    def create_trade_executed(
        cls, symbol: str, trade_id: str, side: str, price: float, volume: float, **extra: Any
    ) -> Self:
        f = {"trade_id": trade_id, "side": side, "price": price, "volume": volume}
        return cls._create(TradeEventType.TRADE_EXECUTED, symbol, f, extra)

    @classmethod
    def create_trade_failed(cls, symbol: str, reason: str, trade_id: str | None = None, **extra: Any) -> Self:
        return cls._create(TradeEventType.TRADE_FAILED, symbol, {"reason": reason, "trade_id": trade_id}, extra)

    @classmethod
    def create_risk_limit_breached(cls, symbol: str, rule: str, limit: float, value: float, **extra: Any) -> Self:
        f = {"rule": rule, "limit": limit, "value": value}
        return cls._create(TradeEventType.RISK_LIMIT_BREACHED, symbol, f, extra)

    @classmethod
    def create_stop_loss_hit(cls, symbol: str, position_id: str, price: float, **extra: Any) -> Self:
        return cls._create(
            TradeEventType.STOP_LOSS_HIT,
            symbol,
            {"position_id": position_id, "price": price},
            extra,
        )

    @classmethod
    def create_take_profit_hit(cls, symbol: str, position_id: str, price: float, **extra: Any) -> Self:
        f = {"position_id": position_id, "price": price}
        return cls._create(TradeEventType.TAKE_PROFIT_HIT, symbol, f, extra)

    @classmethod
    def create_signal_generated(cls, symbol: str, signal_id: str, direction: str, strategy: str, **extra: Any) -> Self:
        f = {"signal_id": signal_id, "direction": direction, "strategy": strategy}
        return cls._create(TradeEventType.SIGNAL_GENERATED, symbol, f, extra)

    @classmethod
    def create_signal_validated(cls, symbol: str, signal_id: str, **extra: Any) -> Self:
        return cls._create(TradeEventType.SIGNAL_VALIDATED, symbol, {"signal_id": signal_id}, extra)

    @classmethod
    def create_signal_rejected(cls, symbol: str, signal_id: str, reason: str, **extra: Any) -> Self:
        return cls._create(
            TradeEventType.SIGNAL_REJECTED,
            symbol,
            {"signal_id": signal_id, "reason": reason},
            extra,
        )
