"""The paper-traded session `tradebus demo` runs: random-walk prices on a few symbols, a moving-average
strategy trading through the executor (which publishes every order and position event on the bus), one
deliberate oversized order that the risk task flags, and the kill switch refusing the next order."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bus.core.bus import RedisEventBus
from bus.core.publisher import PublishReceipt
from bus.events.model import TradeEvent
from bus.executor.builder import TradeExecutor
from bus.executor.orders import OrderTicket
from bus.executor.paper import PaperVenue
from bus.executor.venue import RandomWalkFeed

if TYPE_CHECKING:
    from celery import Celery

#: symbol -> starting price, contract size
DEMO_SYMBOLS: dict[str, tuple[str, int]] = {
    "XAUUSD": ("2000.00", 100),
    "BTCUSD": ("45000.00", 1),
    "EURUSD": ("1.08000", 100_000),
}
LOT = Decimal("1.0")
OVERSIZED_LOT = Decimal("8.0")


class TimedBus:
    """Wraps the RedisEventBus: times every publish and remembers when each event went out."""

    def __init__(self, bus: RedisEventBus) -> None:
        self._bus = bus
        self.publish_seconds: list[float] = []
        self.published_at: dict[str, float] = {}  # event_id -> wall clock after publish returned
        self.expected_tasks: set[str] = set()  # task ids dispatched
        self.not_dispatched = 0
        self._lock = threading.Lock()

    def publish(self, event: TradeEvent) -> PublishReceipt:
        t0 = time.perf_counter()
        receipt = self._bus.publish(event)
        dt = time.perf_counter() - t0
        with self._lock:
            self.publish_seconds.append(dt)
            self.published_at[event.event_id] = time.time()
            for route in receipt.dispatched:
                self.expected_tasks.add(f"{event.event_id}:{route}")
            self.not_dispatched += len(receipt.not_dispatched)
        return receipt

    def __getattr__(self, name: str) -> Any:  # the executor reaches the bus's client and keys through it
        return getattr(self._bus, name)


class TaskMonitor:
    """Celery task events (the worker runs with -E): counts and publish -> task-start latency."""

    def __init__(self, app: Celery, bus: TimedBus) -> None:
        self.app, self.bus = app, bus
        self.counts: Counter[str] = Counter()
        self.started_latency: list[float] = []
        self.finished: set[str] = set()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-task-events", daemon=True)

    def start(self) -> TaskMonitor:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _on(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        uuid = event.get("uuid", "")
        if kind == "task-started":
            self.counts["started"] += 1
            sent = self.bus.published_at.get(uuid.rsplit(":", 1)[0])
            if sent is not None:
                self.started_latency.append(max(0.0, float(event["timestamp"]) - sent))
        elif kind in ("task-succeeded", "task-failed", "task-retried", "task-rejected"):
            self.counts[kind.removeprefix("task-")] += 1
            if kind != "task-retried":
                self.finished.add(uuid)

    def _run(self) -> None:
        try:
            with self.app.connection_for_read() as conn:
                recv = self.app.events.Receiver(conn, handlers={"*": self._on})
                consumer_ready = False
                while not self._stop.is_set():
                    try:
                        if not consumer_ready:
                            self._ready.set()
                            consumer_ready = True
                        for _ in recv.consume(limit=None, timeout=0.5, wakeup=False):
                            if self._stop.is_set():
                                break
                    except TimeoutError:
                        continue
        except Exception:  # noqa: BLE001 - the summary says "no task events" rather than crash
            logging.getLogger(__name__).warning("task event monitor stopped", exc_info=True)
        finally:
            self._ready.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(3)


@dataclass
class SymbolBook:
    prices: deque[Decimal] = field(default_factory=lambda: deque(maxlen=12))
    position: str | None = None
    direction: str | None = None
    halved: bool = False
    last_trade_tick: int = -100
    refused: int = 0
    orders: int = 0


class Strategy:
    """Moving-average crossover (3 vs 8 ticks) with stop-loss / take-profit, one position per symbol."""

    def __init__(self, executor: TradeExecutor, venue: PaperVenue, symbols: list[str]) -> None:
        self.executor, self.venue = executor, venue
        self.books = {s: SymbolBook() for s in symbols}
        self.refusals: list[dict[str, Any]] = []

    def on_tick(self, tick: int, prices: dict[str, Decimal]) -> None:
        for symbol, px in prices.items():
            book = self.books[symbol]
            book.prices.append(px)
            if book.position is not None and self.venue.position(book.position) is None:
                book.position = None  # closed by stop-loss / take-profit
            if len(book.prices) < 8:
                continue
            fast = sum(list(book.prices)[-3:]) / 3
            slow = sum(list(book.prices)[-8:]) / 8
            want = "LONG" if fast > slow else "SHORT"
            if book.position is None:
                if tick - book.last_trade_tick >= 6:
                    self.open(tick, symbol, "BUY" if want == "LONG" else "SELL", LOT)
            elif want != book.direction and tick - book.last_trade_tick >= 4:
                self.executor.close_position(book.position)
                book.position = None
            elif not book.halved and self._profit(symbol, px) > Decimal("0.001"):
                pos = self.venue.position(book.position)
                if pos is not None and pos["volume"] >= Decimal("0.2"):
                    self.executor.close_position(book.position, (pos["volume"] / 2).quantize(Decimal("0.01")))
                    book.halved = True

    def _profit(self, symbol: str, px: Decimal) -> Decimal:
        pos = self.venue.position(self.books[symbol].position or "")
        if pos is None:
            return Decimal(0)
        move = (px - pos["entry_price"]) / pos["entry_price"]
        return move if pos["direction"] == "LONG" else -move

    def open(self, tick: int, symbol: str, side: str, volume: Decimal) -> OrderTicket:
        book = self.books[symbol]
        px = book.prices[-1] if book.prices else self.venue.prices[symbol]
        step = px * Decimal("0.004")
        sl = px - step if side == "BUY" else px + step
        tp = px + step if side == "BUY" else px - step
        ticket = self.executor.place_order(symbol, side, volume, sl=sl, tp=tp)
        book.orders += 1
        book.last_trade_tick = tick
        if ticket.status == "rejected":
            book.refused += 1
            self.refusals.append({"symbol": symbol, "order_id": ticket.order_id, "reason": ticket.reason})
            return ticket
        info = self.venue.order(ticket.order_id) or {}
        if info.get("status") in ("filled", "partially_filled"):
            book.position = self._position_opened_by(ticket.order_id, symbol)
            book.direction = "LONG" if side == "BUY" else "SHORT"
            book.halved = False
        return ticket

    def _position_opened_by(self, order_id: str, symbol: str) -> str | None:
        for p in self.venue.positions():
            if p["symbol"] == symbol and (self.venue.position(p["position_id"]) or {}).get("order_id") == order_id:
                return p["position_id"]
        return None

    def sync_positions(self) -> None:
        """Pick up positions opened by later chunks of a partially filled order."""
        for symbol, book in self.books.items():
            if book.position is None:
                for p in self.venue.positions():
                    if p["symbol"] == symbol:
                        book.position = p["position_id"]
                        book.direction = p["direction"]
                        break


@dataclass
class Session:
    """One demo run's trading parts: what the loop drives and what the summary reads."""

    symbols: list[str]
    bus: RedisEventBus
    timed: TimedBus
    monitor: TaskMonitor
    venue: PaperVenue
    feed: RandomWalkFeed
    executor: TradeExecutor
    strategy: Strategy

    def close(self) -> None:
        self.executor.close()
        self.monitor.stop()
        self.bus.close()
