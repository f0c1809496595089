"""What the executor needs from a trading venue (``TradingVenue``: a broker account or an exchange), what
a venue reports (``VenueUpdate``),
and a seeded random-walk price feed.

A venue reports what happened as ``VenueUpdate`` records, in order, to its listeners; the executor
turns them into TradeEvents. Money and volumes are ``Decimal``; floats appear only in events.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from bus.events.model import TradeEventType as T

Number = Decimal | int | float | str


@dataclass(frozen=True)
class VenueUpdate:
    """One thing that happened at the venue. ``data`` holds the event fields (Decimals for numbers)."""

    kind: T
    symbol: str
    data: Mapping[str, Any]


@runtime_checkable
class TradingVenue(Protocol):
    def add_listener(self, listener: Callable[[VenueUpdate], None]) -> None: ...
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
    ) -> str: ...
    def cancel_order(self, order_id: str, reason: str | None = None) -> None: ...
    def modify_order(self, order_id: str, **changes: Number) -> None: ...
    def close_position(self, position_id: str, volume: Number | None = None) -> None: ...
    def modify_position(self, position_id: str, **changes: Number) -> None: ...
    def order(self, order_id: str) -> dict[str, Any] | None: ...
    def positions(self) -> list[dict[str, str]]:
        """Open positions: [{"symbol","position_id","direction","volume","entry_price"}], decimals as str."""
        ...


def dec(value: Number) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


class PriceSink(Protocol):
    def set_price(self, symbol: str, price: Number) -> None: ...


class RandomWalkFeed:
    """Seeded random-walk prices pushed into a venue with ``set_price``."""

    def __init__(
        self,
        venue: PriceSink,
        prices: Mapping[str, Number],
        *,
        seed: int | None = None,
        volatility: float = 0.001,
        tick: Number = "0.01",
    ) -> None:
        self.venue = venue
        self.prices = {s: dec(p) for s, p in prices.items()}
        self.rng = random.Random(seed)
        self.volatility = volatility
        self.tick = dec(tick)
        for symbol, px in self.prices.items():
            venue.set_price(symbol, px)

    def step(self) -> dict[str, Decimal]:
        for symbol, px in self.prices.items():
            moved = px * dec(1 + self.rng.gauss(0.0, self.volatility))
            self.prices[symbol] = max(self.tick, moved.quantize(self.tick))
            self.venue.set_price(symbol, self.prices[symbol])
        return dict(self.prices)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()
