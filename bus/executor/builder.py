"""The executor side of the bus: ``ExecutorBuilder.build_from_config`` as in the reference README.

``OrderExecutor`` sends orders to a ``TradingVenue`` and turns every venue update into a TradeEvent,
published through an ``OutboxPublisher`` (a bus failure is logged and the event waits on local disk;
trading goes on). The events of one trade share a correlation id; each event's ``causation_id`` is the
event that caused it (order.created <- order.partially_filled <- order.filled <- position.opened ...).

Kill switch: a RISK_LIMIT_BREACHED for a symbol (published by this executor, received from the bus, or
set in the Redis hash ``Keys.kill_switch()``) makes the executor refuse new orders on that symbol,
publishing ORDER_REJECTED with reason ``kill switch: ...``, until ``reset_kill_switch(symbol)``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

from bus.config import state_home
from bus.core.bus import RedisEventBus
from bus.errors import ConfigError
from bus.events.model import TradeEventType as T
from bus.executor.orders import NullBus, OrderExecutor
from bus.executor.outbox import (
    DEFAULT_OUTBOX_MAX_BYTES,
    DEFAULT_OUTBOX_MAX_EVENTS,
    DEFAULT_OUTBOX_RETRY_INTERVAL,
    Outbox,
    OutboxPublisher,
)
from bus.executor.paper import PaperVenue
from bus.executor.venue import TradingVenue

# --- configuration ------------------------------------------------------------------------------


@dataclass
class ExecutorConfig:
    source: str = "executor"  # its events' source; also names its outbox's numbering on the bus: one per executor
    symbols: tuple[str, ...] = ()  # symbols this executor trades (breach subscription); () = all
    outbox_path: str | None = None  # default: $XDG_STATE_HOME/tradebus/outbox-{source}.sqlite3
    outbox_max_events: int = DEFAULT_OUTBOX_MAX_EVENTS
    outbox_max_bytes: int = DEFAULT_OUTBOX_MAX_BYTES
    outbox_retry_interval: float = DEFAULT_OUTBOX_RETRY_INTERVAL
    listen_for_breaches: bool = True  # subscribe to risk.limit_breached on the bus (if it can subscribe)
    outbox_flush_interval: float = 1.0  # seconds between background flushes of a non-empty outbox; 0 = off

    @classmethod
    def coerce(cls, config: ExecutorConfig | Mapping[str, Any] | None) -> ExecutorConfig:
        if isinstance(config, cls):
            return config
        # not an instance of cls: a mapping or None (a config of another class fails in dict() as before)
        values = dict(cast("Mapping[str, Any] | None", config) or {})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown executor config keys: {', '.join(sorted(unknown))}")
        if "symbols" in values:
            values["symbols"] = tuple(values["symbols"])
        return cls(**values)

    def resolved_outbox_path(self) -> Path:
        if self.outbox_path:
            return Path(self.outbox_path)
        return state_home() / "tradebus" / f"outbox-{self.source}.sqlite3"


# --- the trade executor: an OrderExecutor plus its outbox flusher and breach listener -------


class TradeExecutor:
    """What ``ExecutorBuilder.build_from_config`` returns: the trading venue, the OrderExecutor and the outbox."""

    def __init__(
        self,
        config: ExecutorConfig,
        client: TradingVenue,
        order_executor: OrderExecutor,
        publisher: OutboxPublisher,
        event_bus: Any,
        logger: logging.Logger,
    ) -> None:
        self.config, self.client, self.order_executor = config, client, order_executor
        self.publisher, self.event_bus, self.log = publisher, event_bus, logger
        self._listener: Any = None
        self._listener_bus: RedisEventBus | None = None
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def __getattr__(self, name: str) -> Any:  # buy / sell / place_order / close_position / ... / kill switch
        if name == "order_executor":
            raise AttributeError(name)
        return getattr(self.order_executor, name)

    @property
    def pending_events(self) -> int:
        """Events waiting in the outbox for the bus."""
        return self.publisher.pending

    def flush(self) -> int:
        """Send what waits in the outbox, in order; returns how many went out (stops at a bus failure)."""
        return self.publisher.flush()

    def start(self) -> TradeExecutor:
        """Start the background outbox flusher and the risk.limit_breached listener (as configured)."""
        if self._flusher is None and self.config.outbox_flush_interval > 0:
            self._flusher = threading.Thread(target=self._flush_loop, name="tradebus-outbox", daemon=True)
            self._flusher.start()
        return self._start_listener()

    def _flush_loop(self) -> None:
        # Idle executors publish nothing, so nothing else would notice that Redis is back.
        while not self._stop.wait(self.config.outbox_flush_interval):
            if self.publisher.pending:
                try:
                    self.publisher.flush()
                except Exception:  # keep flushing later; never die silently
                    self.log.exception("background outbox flush failed")

    def _start_listener(self) -> TradeExecutor:
        bus, handler = self.event_bus, self.order_executor.on_risk_event
        if self._listener is not None or not self.config.listen_for_breaches:
            return self
        if not hasattr(bus, "listen_in_thread"):
            return self
        if isinstance(bus, RedisEventBus):
            # A listener of its own (same client and prefix): the caller's bus stays free for the
            # caller's listen(), and close() here never stops the caller's subscriptions.
            bus = self._listener_bus = bus.detached()
        if self.config.symbols and hasattr(bus, "subscribe"):
            for symbol in self.config.symbols:
                bus.subscribe(symbol, T.RISK_LIMIT_BREACHED, handler)
        elif hasattr(bus, "subscribe_type"):
            bus.subscribe_type(T.RISK_LIMIT_BREACHED, handler)
        else:
            return self
        self._listener = bus.listen_in_thread()
        return self

    def wait_until_listening(self, timeout: float) -> bool:
        """True once the breach listener is subscribed (False without one, or on timeout)."""
        return self._listener is not None and self._listener.wait_ready(timeout)

    def close(self) -> None:
        """Stop the flusher and the breach listener; close the outbox (what is queued stays on disk)."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(10.0)
            self._flusher = None
        if self._listener is not None:
            self._listener.stop()
            self._listener.join(5.0)
            self._listener = None
        if self._listener_bus is not None:
            self._listener_bus.close()
            self._listener_bus = None
        self.publisher.close()

    def __enter__(self) -> TradeExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ExecutorBuilder:
    @staticmethod
    def build_from_config(
        config: ExecutorConfig | Mapping[str, Any] | None = None,
        client: TradingVenue | None = None,
        event_bus: Any = None,
        logger: logging.Logger | None = None,
    ) -> TradeExecutor:
        """Build a TradeExecutor publishing to ``event_bus`` (a RedisEventBus, or anything with publish).

        Redis may be down: with a bus built by ``EventBusFactory.create_from_env(settings, connect=False)``
        (or ``RedisEventBus(..., connect=False)``) the executor starts and trades, its events wait in its
        outbox and go out, each logged once, when Redis answers."""
        cfg = ExecutorConfig.coerce(config)
        log = logger or logging.getLogger(f"{__name__}.{cfg.source}")
        venue = client if client is not None else PaperVenue(symbols=cfg.symbols or None)
        outbox = Outbox(cfg.resolved_outbox_path(), max_events=cfg.outbox_max_events, max_bytes=cfg.outbox_max_bytes)
        publisher = OutboxPublisher(
            event_bus if event_bus is not None else NullBus(),
            outbox,
            source=cfg.source,
            logger=log,
            retry_interval=cfg.outbox_retry_interval,
        )
        if len(outbox):
            log.warning("outbox %s holds %d events from before; flushing", outbox.path, len(outbox))
            publisher.flush()
        executor = OrderExecutor(
            venue,
            publisher,
            source=cfg.source,
            logger=log,
            redis_client=getattr(event_bus, "client", None),
            keys=getattr(event_bus, "keys", None),
        )
        return TradeExecutor(cfg, venue, executor, publisher, event_bus, log).start()
