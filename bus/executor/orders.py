"""OrderExecutor: sends orders to a ``TradingVenue`` and turns every venue update into a TradeEvent.

Events go out through an ``OutboxPublisher`` (a bus failure is logged and the event waits on local
disk; trading goes on). The events of one trade share a correlation id; each event's ``causation_id``
is the event that caused it. A symbol whose kill switch is engaged gets no new orders: they are
refused and reported as ORDER_REJECTED with reason ``kill switch: ...``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis

from bus.core.keys import Keys
from bus.events.model import TradeEvent
from bus.events.model import TradeEventType as T
from bus.executor.killswitch import engage_kill_switch, kill_switch_reason, release_kill_switch
from bus.executor.outbox import OutboxPublisher
from bus.executor.venue import Number, TradingVenue, VenueUpdate
from bus.observability.logs import event_fields

KILL_SWITCH_PREFIX = "kill switch: "


@dataclass(frozen=True)
class OrderTicket:
    order_id: str
    status: str  # pending / partially_filled / filled / rejected ...
    correlation_id: str
    reason: str | None = None


class NullBus:
    """Stands in when no event bus is given: events are not published anywhere."""

    def publish(self, event: TradeEvent) -> None:
        return None


# --- the executor ---------------------------------------------------------------------------------


class OrderExecutor:
    """Places orders through ``venue`` and publishes what happens (see the module docstring)."""

    def __init__(
        self,
        venue: TradingVenue,
        publisher: OutboxPublisher,
        *,
        source: str = "executor",
        logger: logging.Logger | None = None,
        redis_client: redis.Redis | None = None,
        keys: Keys | None = None,
    ) -> None:
        self.venue = venue
        self.publisher = publisher
        self.source = source
        self.log = logger or logging.getLogger(__name__)
        self.redis_client = redis_client
        self.keys = keys
        self._killed: dict[str, str] = {}
        self._unsynced: set[str] = set()  # symbols whose kill-switch change Redis has not seen yet
        self._chain: dict[str, tuple[str, str]] = {}  # "O:id"/"P:id" -> (correlation_id, last event id)
        self._ctx = threading.local()  # the correlation/causation of the order being placed
        venue.add_listener(self._on_update)

    # orders and positions
    def place_order(
        self,
        symbol: str,
        side: str,
        volume: Number,
        *,
        order_type: str = "MARKET",
        price: Number | None = None,
        sl: Number | None = None,
        tp: Number | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> OrderTicket:
        corr = correlation_id or uuid.uuid4().hex
        halted = self.kill_switch_reason(symbol)
        if halted is not None or self.publisher.is_full:
            why = KILL_SWITCH_PREFIX + halted if halted is not None else "outbox full: cannot record events"
            oid = f"REJ-{uuid.uuid4().hex[:12]}"
            ev = self._emit(
                TradeEvent.create_order_rejected(
                    symbol,
                    oid,
                    why,
                    side=side.upper(),
                    requested_volume=str(volume),
                    correlation_id=corr,
                    causation_id=causation_id,
                )
            )
            self._emit(
                TradeEvent.create_trade_failed(symbol, why, trade_id=oid, correlation_id=corr, causation_id=ev.event_id)
            )
            self.log.warning("order refused on %s: %s", symbol, why)
            return OrderTicket(oid, "rejected", corr, why)
        self._ctx.pending = (corr, causation_id)
        try:
            oid = self.venue.place_order(symbol, side, volume, order_type=order_type, price=price, sl=sl, tp=tp)
        finally:
            self._ctx.pending = None
        info = self.venue.order(oid) or {}
        return OrderTicket(oid, info.get("status", "unknown"), corr, info.get("reason"))

    def buy(self, symbol: str, volume: Number, **kw: Any) -> OrderTicket:
        return self.place_order(symbol, "BUY", volume, **kw)

    def sell(self, symbol: str, volume: Number, **kw: Any) -> OrderTicket:
        return self.place_order(symbol, "SELL", volume, **kw)

    def cancel_order(self, order_id: str, reason: str | None = None) -> None:
        self.venue.cancel_order(order_id, reason)

    def modify_order(self, order_id: str, **changes: Number) -> None:
        self.venue.modify_order(order_id, **changes)

    def close_position(self, position_id: str, volume: Number | None = None) -> None:
        self.venue.close_position(position_id, volume)

    def modify_position(self, position_id: str, **changes: Number) -> None:
        self.venue.modify_position(position_id, **changes)

    # publishing
    def publish(self, event: TradeEvent) -> TradeEvent:
        """Publish any event through the executor (never raises on a bus failure)."""
        return self._emit(event)

    def report_risk_breach(self, symbol: str, rule: str, limit: float, value: float, **extra: Any) -> TradeEvent:
        """Publish RISK_LIMIT_BREACHED and halt new orders on ``symbol``."""
        return self._emit(TradeEvent.create_risk_limit_breached(symbol, rule, limit, value, **extra))

    def _emit(self, event: TradeEvent) -> TradeEvent:
        if event.source is None:
            event = event.model_copy(update={"source": self.source})
        if event.event_type is T.RISK_LIMIT_BREACHED:
            self.on_risk_event(event)
        self.publisher.publish(event)
        return event

    def _on_update(self, u: VenueUpdate) -> None:
        data = {k: float(v) if isinstance(v, Decimal) else v for k, v in u.data.items()}
        oid, pid = u.data.get("order_id") or u.data.get("trade_id"), u.data.get("position_id")
        okey, pkey = f"O:{oid}", f"P:{pid}"
        if u.kind in (T.ORDER_CREATED, T.ORDER_REJECTED) and okey not in self._chain:
            corr, cause = getattr(self._ctx, "pending", None) or (uuid.uuid4().hex, None)
        elif u.kind.is_order or u.kind in (T.TRADE_EXECUTED, T.TRADE_FAILED, T.POSITION_OPENED):
            corr, cause = self._chain.get(okey) or (uuid.uuid4().hex, None)
        else:  # position events, stop-loss / take-profit hits
            corr, cause = self._chain.get(pkey) or (uuid.uuid4().hex, None)
        ev = self._emit(
            TradeEvent(
                event_type=u.kind,
                symbol=u.symbol,
                data=data,
                correlation_id=corr,
                causation_id=cause,
                source=self.source,
            )
        )
        if u.kind.is_order:
            self._chain[okey] = (corr, ev.event_id)
            if u.kind is T.ORDER_CANCELLED and not u.data.get("filled_volume"):
                self._chain.pop(okey, None)
        elif u.kind in (T.TRADE_EXECUTED, T.TRADE_FAILED):
            self._chain.pop(okey, None)
        elif u.kind is T.POSITION_CLOSED:
            self._chain.pop(pkey, None)
        elif pid is not None:
            self._chain[pkey] = (corr, ev.event_id)

    # kill switch
    def on_risk_event(self, event: TradeEvent) -> None:
        """Handler for RISK_LIMIT_BREACHED (own or from the bus): halt new orders on its symbol."""
        if event.event_type is not T.RISK_LIMIT_BREACHED:
            return
        d = event.data
        reason = f"{d.get('rule', 'risk')} breached ({d.get('value')} > {d.get('limit')}), event {event.event_id}"
        if event.symbol not in self._killed:
            self.log.warning("kill switch engaged for %s: %s", event.symbol, reason, extra=event_fields(event))
        self._killed[event.symbol] = reason
        self._write(event.symbol)

    def kill_switch_reason(self, symbol: str) -> str | None:
        """Why new orders on ``symbol`` are refused, or None. The Redis hash is the authority when reachable."""
        if self.redis_client is None or self.publisher.pending:  # bus down: don't wait on it per order
            return self._killed.get(symbol)
        if symbol in self._unsynced:  # a change made while Redis was down goes there first
            self._write(symbol)
            if symbol in self._unsynced:
                return self._killed.get(symbol)
        try:
            reason = kill_switch_reason(self.redis_client, self.keys or Keys(), symbol)
        except redis.RedisError:
            return self._killed.get(symbol)
        if reason is None:
            self._killed.pop(symbol, None)  # reset elsewhere (CLI, another executor)
        else:
            self._killed[symbol] = reason
        return reason

    def reset_kill_switch(self, symbol: str) -> None:
        self._killed.pop(symbol, None)
        self._write(symbol)
        self.log.warning("kill switch reset for %s", symbol)

    def _write(self, symbol: str) -> None:
        """Make the Redis hash say what the local state says (retried later if Redis is down)."""
        if self.redis_client is None:
            return
        keys = self.keys or Keys()
        try:
            if symbol in self._killed:
                engage_kill_switch(self.redis_client, keys, symbol, self._killed[symbol])
            else:
                release_kill_switch(self.redis_client, keys, symbol)
            self._unsynced.discard(symbol)
        except redis.RedisError as e:
            self._unsynced.add(symbol)
            self.log.warning("kill switch for %s not written to Redis (%s); kept locally", symbol, e)
