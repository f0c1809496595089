"""A simulated trading venue (an account at a broker or exchange) for the demo, tests and paper trading.

PaperVenue (a ``TradingVenue``, see bus/executor/venue.py): market and limit orders against prices set
with ``set_price`` (or ``RandomWalkFeed``); orders larger than ``max_fill_volume`` fill in chunks,
one chunk now and one per price update; rejects for an unknown symbol, an invalid volume or price,
and insufficient margin; stop-loss / take-profit checked on every price update; one position per
filled order (hedging account).
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bus.events.model import TradeEventType as T
from bus.executor.venue import Number, RandomWalkFeed, TradingVenue, VenueUpdate, dec

__all__ = ["TradingVenue", "VenueUpdate", "Number", "PaperVenue", "RandomWalkFeed", "dec"]
log = logging.getLogger(__name__)


@dataclass
class _Order:
    order_id: str
    symbol: str
    side: str  # BUY / SELL
    limit: Decimal | None
    volume: Decimal
    sl: Decimal | None
    tp: Decimal | None
    filled: Decimal = Decimal(0)
    notional: Decimal = Decimal(0)
    status: str = "pending"  # pending / partially_filled / filled / cancelled / rejected
    reason: str | None = None  # why it was rejected or cancelled


@dataclass
class _Position:
    position_id: str
    order_id: str
    symbol: str
    direction: str  # LONG / SHORT
    volume: Decimal
    entry_price: Decimal
    sl: Decimal | None
    tp: Decimal | None
    realized: Decimal = field(default=Decimal(0))


class PaperVenue:
    """A simulated venue account (see the module docstring). Thread-safe; updates are delivered in order."""

    def __init__(
        self,
        *,
        balance: Number = 100_000,
        leverage: Number = 100,
        contract_sizes: Mapping[str, Number] | None = None,
        symbols: Iterable[str] | None = None,
        max_fill_volume: Number | None = None,
        volume_step: Number = "0.01",
        max_volume: Number = 1000,
        id_prefix: str | None = None,
    ) -> None:
        self.balance = dec(balance)
        self.leverage = dec(leverage)
        self.contract_sizes = {k: dec(v) for k, v in (contract_sizes or {}).items()}
        self.symbols = set(symbols) if symbols is not None else None
        self.max_fill_volume = dec(max_fill_volume) if max_fill_volume is not None else None
        self.volume_step = dec(volume_step)
        self.max_volume = dec(max_volume)
        self.id_prefix = id_prefix if id_prefix is not None else uuid.uuid4().hex[:6] + "-"
        self.prices: dict[str, Decimal] = {}
        self._orders: dict[str, _Order] = {}
        self._positions: dict[str, _Position] = {}
        self._ids = itertools.count(1)
        self._listeners: list[Callable[[VenueUpdate], None]] = []
        self._lock = threading.RLock()

    # --- listeners and snapshots ---------------------------------------------------------------

    def add_listener(self, listener: Callable[[VenueUpdate], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, kind: T, symbol: str, **data: Any) -> None:
        update = VenueUpdate(kind, symbol, {k: v for k, v in data.items() if v is not None})
        for listener in self._listeners:
            try:
                listener(update)
            except Exception:  # a listener's bug must not break the account
                log.exception("venue listener failed on %s", kind.value)

    def positions(self) -> list[dict[str, str]]:
        with self._lock:
            return [
                {
                    "symbol": p.symbol,
                    "position_id": p.position_id,
                    "direction": p.direction,
                    "volume": str(p.volume),
                    "entry_price": str(p.entry_price),
                }
                for p in self._positions.values()
            ]

    def position(self, position_id: str) -> dict[str, Any] | None:
        with self._lock:
            p = self._positions.get(position_id)
            return None if p is None else dict(vars(p))

    def order(self, order_id: str) -> dict[str, Any] | None:
        with self._lock:
            o = self._orders.get(order_id)
            return None if o is None else dict(vars(o))

    def open_orders(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(vars(o)) for o in self._orders.values() if o.status in ("pending", "partially_filled")]

    def used_margin(self) -> Decimal:
        with self._lock:
            used = sum((self._margin(p.symbol, p.volume, p.entry_price) for p in self._positions.values()), Decimal(0))
            for o in self._orders.values():
                if o.status in ("pending", "partially_filled"):
                    used += self._margin(o.symbol, o.volume - o.filled, o.limit or self.prices[o.symbol])
            return used

    def equity(self) -> Decimal:
        with self._lock:
            return self.balance + sum(
                (self._pnl(p, self.prices[p.symbol], p.volume) for p in self._positions.values()), Decimal(0)
            )

    # --- orders ----------------------------------------------------------------------------------

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
    ) -> str:
        """Place a MARKET or LIMIT order; returns its id. A refused order is reported as ORDER_REJECTED."""
        side, order_type = side.upper(), order_type.upper()
        if side not in ("BUY", "SELL") or order_type not in ("MARKET", "LIMIT"):
            raise ValueError(f"side must be BUY/SELL and order_type MARKET/LIMIT, got {side!r} {order_type!r}")
        with self._lock:
            oid = f"{self.id_prefix}O{next(self._ids)}"
            vol = dec(volume)
            limit = dec(price) if order_type == "LIMIT" and price is not None else None
            reason = self._check(symbol, vol, order_type, limit)
            if reason:
                self._orders[oid] = _Order(oid, symbol, side, limit, vol, None, None, status="rejected", reason=reason)
                self._emit(T.ORDER_REJECTED, symbol, order_id=oid, reason=reason)
                self._emit(T.TRADE_FAILED, symbol, trade_id=oid, reason=reason)
                return oid
            o = _Order(oid, symbol, side, limit, vol, _opt(sl), _opt(tp))
            self._orders[oid] = o
            self._emit(
                T.ORDER_CREATED,
                symbol,
                order_id=oid,
                order_type=side if limit is None else f"{side}_LIMIT",
                price=limit or self.prices[symbol],
                volume=vol,
                sl=o.sl,
                tp=o.tp,
            )
            self._try_fill(o)
            return oid

    def _check(self, symbol: str, vol: Decimal, order_type: str, limit: Decimal | None) -> str | None:
        if symbol not in self.prices or (self.symbols is not None and symbol not in self.symbols):
            return f"unknown symbol {symbol!r}"
        if not vol.is_finite() or vol <= 0 or vol > self.max_volume or vol % self.volume_step:
            return f"invalid volume {vol}: must be a multiple of {self.volume_step} in (0, {self.max_volume}]"
        if order_type == "LIMIT" and (limit is None or not limit.is_finite() or limit <= 0):
            return f"invalid limit price {limit}"
        need = self._margin(symbol, vol, limit or self.prices[symbol])
        free = self.equity() - self.used_margin()
        if need > free:
            return f"insufficient margin: need {need:.2f}, free {free:.2f}"
        return None

    def cancel_order(self, order_id: str, reason: str | None = None) -> None:
        with self._lock:
            o = self._pending(order_id)
            o.status, o.reason = "cancelled", reason or "cancelled by client"
            self._emit(
                T.ORDER_CANCELLED, o.symbol, order_id=o.order_id, reason=o.reason, filled_volume=o.filled or None
            )
            if o.filled:  # the filled part becomes a position
                self._open_position(o)

    def modify_order(self, order_id: str, **changes: Number) -> None:
        """Change a pending order's ``price`` (limit), ``sl`` or ``tp``."""
        with self._lock:
            o = self._pending(order_id)
            new = {k: dec(v) for k, v in changes.items() if k in ("price", "sl", "tp") and v is not None}
            if "price" in new and o.limit is not None:
                o.limit = new["price"]
            o.sl, o.tp = new.get("sl", o.sl), new.get("tp", o.tp)
            self._emit(T.ORDER_MODIFIED, o.symbol, order_id=o.order_id, **new)
            self._try_fill(o)

    def _pending(self, order_id: str) -> _Order:
        o = self._orders.get(order_id)
        if o is None or o.status not in ("pending", "partially_filled"):
            raise KeyError(f"no pending order {order_id!r}")
        return o

    def _try_fill(self, o: _Order) -> None:
        """Fill one chunk of ``o`` if the current price allows it."""
        px = self.prices[o.symbol]
        if o.limit is not None and ((o.side == "BUY" and px > o.limit) or (o.side == "SELL" and px < o.limit)):
            return
        remaining = o.volume - o.filled
        chunk = min(remaining, self.max_fill_volume) if self.max_fill_volume else remaining
        o.filled += chunk
        o.notional += chunk * px
        if o.filled < o.volume:
            o.status = "partially_filled"
            self._emit(
                T.ORDER_PARTIALLY_FILLED,
                o.symbol,
                order_id=o.order_id,
                fill_price=px,
                fill_volume=chunk,
                filled_volume=o.filled,
                remaining_volume=o.volume - o.filled,
            )
            return
        o.status = "filled"
        self._emit(T.ORDER_FILLED, o.symbol, order_id=o.order_id, fill_price=o.notional / o.filled, volume=o.filled)
        self._open_position(o)

    def _open_position(self, o: _Order) -> None:
        avg = o.notional / o.filled
        pid = f"{self.id_prefix}P{next(self._ids)}"
        p = _Position(pid, o.order_id, o.symbol, "LONG" if o.side == "BUY" else "SHORT", o.filled, avg, o.sl, o.tp)
        self._positions[pid] = p
        self._emit(
            T.POSITION_OPENED,
            o.symbol,
            position_id=pid,
            order_id=o.order_id,
            entry_price=avg,
            volume=o.filled,
            direction=p.direction,
            sl=p.sl,
            tp=p.tp,
        )
        self._emit(
            T.TRADE_EXECUTED,
            o.symbol,
            trade_id=o.order_id,
            order_id=o.order_id,
            position_id=pid,
            side=o.side,
            price=avg,
            volume=o.filled,
        )
        self._check_triggers(p)

    # --- positions -------------------------------------------------------------------------------

    def close_position(self, position_id: str, volume: Number | None = None, *, reason: str = "client") -> None:
        """Close all of a position, or ``volume`` of it, at the current price."""
        with self._lock:
            p = self._positions.get(position_id)
            if p is None:
                raise KeyError(f"no open position {position_id!r}")
            vol = p.volume if volume is None else dec(volume)
            if vol <= 0 or vol > p.volume or vol % self.volume_step:
                raise ValueError(f"cannot close {vol} of position {position_id} (volume {p.volume})")
            px = self.prices[p.symbol]
            pnl = self._pnl(p, px, vol)
            p.volume -= vol
            p.realized += pnl
            self.balance += pnl
            if p.volume:
                self._emit(
                    T.POSITION_PARTIALLY_CLOSED,
                    p.symbol,
                    position_id=p.position_id,
                    exit_price=px,
                    closed_volume=vol,
                    pnl=pnl,
                    remaining_volume=p.volume,
                    reason=reason,
                )
            else:
                del self._positions[position_id]
                self._emit(
                    T.POSITION_CLOSED,
                    p.symbol,
                    position_id=p.position_id,
                    exit_price=px,
                    pnl=pnl,
                    closed_volume=vol,
                    total_pnl=p.realized,
                    reason=reason,
                )

    def modify_position(self, position_id: str, **changes: Number) -> None:
        """Change a position's ``sl`` / ``tp``; a level already crossed triggers at once."""
        with self._lock:
            p = self._positions.get(position_id)
            if p is None:
                raise KeyError(f"no open position {position_id!r}")
            new = {k: dec(v) for k, v in changes.items() if k in ("sl", "tp") and v is not None}
            p.sl, p.tp = new.get("sl", p.sl), new.get("tp", p.tp)
            self._emit(T.POSITION_MODIFIED, p.symbol, position_id=p.position_id, **new)
            self._check_triggers(p)

    def _check_triggers(self, p: _Position) -> None:
        px = self.prices[p.symbol]
        long = p.direction == "LONG"
        if p.sl is not None and (px <= p.sl if long else px >= p.sl):
            self._emit(T.STOP_LOSS_HIT, p.symbol, position_id=p.position_id, price=px, sl=p.sl)
            self.close_position(p.position_id, reason="stop_loss")
        elif p.tp is not None and (px >= p.tp if long else px <= p.tp):
            self._emit(T.TAKE_PROFIT_HIT, p.symbol, position_id=p.position_id, price=px, tp=p.tp)
            self.close_position(p.position_id, reason="take_profit")

    # --- prices ----------------------------------------------------------------------------------

    def set_price(self, symbol: str, price: Number) -> None:
        """A new price: fills what it allows (oldest order first), then checks SL/TP."""
        px = dec(price)
        if not px.is_finite() or px <= 0:
            raise ValueError(f"price must be > 0, got {price!r}")
        with self._lock:
            self.prices[symbol] = px
            for o in [o for o in self._orders.values() if o.symbol == symbol]:
                if o.status in ("pending", "partially_filled"):
                    self._try_fill(o)
            for p in [p for p in self._positions.values() if p.symbol == symbol]:
                if p.position_id in self._positions:
                    self._check_triggers(p)

    def _margin(self, symbol: str, volume: Decimal, price: Decimal) -> Decimal:
        return volume * price * self.contract_sizes.get(symbol, Decimal(1)) / self.leverage

    def _pnl(self, p: _Position, price: Decimal, volume: Decimal) -> Decimal:
        sign = 1 if p.direction == "LONG" else -1
        return sign * (price - p.entry_price) * volume * self.contract_sizes.get(p.symbol, Decimal(1))


def _opt(value: Number | None) -> Decimal | None:
    return None if value is None else dec(value)
