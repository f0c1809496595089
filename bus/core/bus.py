"""RedisEventBus: durable one-round-trip publish, self-healing subscriptions, state queries.

The bus composes a ``Publisher`` (bus/core/publisher.py: publish.lua, inline effects, the dispatch
protocol of bus/core/dispatching.py) and, on first use, a ``Subscriber`` (bus/core/subscriber.py:
gap detection and catch-up from the log). A bus built from settings with its dispatcher comes from
``EventBusFactory`` (bus/dispatch/factory.py).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from typing import Any, cast

import redis
from redis.cluster import RedisCluster

from bus.config import Settings
from bus.core import state
from bus.core.connection import _client_where, describe_server, make_client, raw_connection, unreachable
from bus.core.dispatching import TaskDispatcher
from bus.core.durability import Durability
from bus.core.keys import ALL_PATTERN, Keys, channel, symbol_pattern, type_pattern
from bus.core.publisher import Publisher, PublishReceipt
from bus.core.steps import Command, Steps, run
from bus.core.subscriber import ListenerHandle, Subscriber
from bus.core.subscription import Counters, Handler, LostHandler
from bus.core.wire import LogEntries, decode_entry, text
from bus.errors import BusConnectionError
from bus.events.model import TradeEvent, TradeEventType
from bus.events.rules import validate_symbol

__all__ = ["PublishReceipt", "RedisEventBus"]

#: seconds ``is_connected`` waits for PONG
PING_TIMEOUT = 0.5


class RedisEventBus:
    """Publish TradeEvents to Redis, subscribe to them, query the state projection."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | RedisCluster | None = None,
        settings: Settings | None = None,
        key_prefix: str | None = None,
        log_maxlen: int | None = None,
        max_event_bytes: int | None = None,
        apply_state: bool = False,
        dispatcher: TaskDispatcher[Any] | None = None,
        connect: bool = True,
    ) -> None:
        """``connect=False`` skips the start-up PING: the bus is built while Redis is down and connects on
        first use (an executor that must start and trade during an outage, its events in its outbox)."""
        # Settings() would read the environment; a library class takes explicit arguments only.
        self.settings = settings if settings is not None else Settings.model_construct()
        s = self.settings
        self.url = url or (None if client is not None else s.bus_url)
        self._own_client = client is None
        # A RedisCluster serves every command the bus sends (each names keys of one {symbol} slot, or is
        # routed by redis-py); what needs a connection pool goes through connection.node_pool.
        self.client: redis.Redis = (
            cast(redis.Redis, client) if client is not None else make_client(self.url, s)  # type: ignore[arg-type]
        )
        self.where = describe_server(self.url) if self.url else _client_where(self.client)
        self.keys = Keys(key_prefix or s.key_prefix)
        self.publisher = Publisher(
            self.client,
            self.keys,
            log_maxlen=int(log_maxlen or s.log_maxlen),
            max_event_bytes=int(max_event_bytes or s.max_event_bytes),
            dispatcher=dispatcher,
            effects=self._effects(apply_state),
            durability=Durability.from_settings(s),
        )
        self._subscriber: Subscriber | None = None
        self._ping_conn: Any = None
        if connect:
            self._check_connection()
        if dispatcher is not None:
            dispatcher.attach(self.client, self.keys)

    def __repr__(self) -> str:
        return f"RedisEventBus({self.where!r}, prefix={self.keys.prefix!r})"

    def _check_connection(self) -> None:
        try:
            self.client.ping()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self._close_client()
            raise self._connection_error(e) from None

    def _connection_error(self, e: Exception) -> BusConnectionError:
        return unreachable(self.where, e)

    # --- publish ------------------------------------------------------------------------------------

    def publish(self, event: TradeEvent) -> PublishReceipt:
        """Log + broadcast ``event`` atomically in one round trip, then its routed tasks (durable publish)."""
        try:
            return self.publisher.publish(event)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise self._connection_error(e) from None

    def publish_many(self, events: Iterable[TradeEvent]) -> list[PublishReceipt]:
        """Publish a batch in one pipeline (one round trip). Nothing is sent if any event is invalid."""
        try:
            return self.publisher.publish_many(events)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise self._connection_error(e) from None

    @property
    def dispatcher(self) -> TaskDispatcher[Any] | None:
        """What enqueues the routed Celery tasks of each published event (None: no tasks)."""
        return self.publisher.dispatcher

    @property
    def apply_state(self) -> bool:
        """Whether publish also applies order/position events to the state projection, in its round trip."""
        return bool(self.publisher.effects)

    @apply_state.setter
    def apply_state(self, on: bool) -> None:
        self.publisher.effects = self._effects(on)

    def _effects(self, apply_state: bool) -> tuple[state.StateEffect, ...]:
        return (state.StateEffect(self.keys, self.settings.state_retention),) if apply_state else ()

    @property
    def publish_run_max(self) -> int:
        """Events per publish_many.lua call; 1 publishes every event with its own publish.lua call."""
        return self.publisher.run_max

    @publish_run_max.setter
    def publish_run_max(self, n: int) -> None:
        self.publisher.run_max = n

    # --- subscribe / listen -------------------------------------------------------------------------

    @property
    def subscriber(self) -> Subscriber:
        if self._subscriber is None:
            self._subscriber = Subscriber(self.client, self.keys, self.settings)
        return self._subscriber

    @property
    def counters(self) -> Counters:
        """delivered, handler_errors, malformed, recovered_from_log, gaps_lost, events_lost, reconnects,
        foreign, forged, loop_errors."""
        return self.subscriber.counters

    def on_lost_events(self, callback: LostHandler) -> None:
        """Call ``callback(LostEvents)`` when events a subscription needed were trimmed from the log
        (``TRADEBUS_LOG_MAXLEN``) before it could catch up: how many, of which symbol, between which
        log ids. Runs on the listener's thread, before the events that follow the loss."""
        self.subscriber.on_lost_events(callback)

    def subscribe(self, symbol: str, event_type: TradeEventType | str, handler: Handler) -> None:
        """Call ``handler(event)`` for each ``event_type`` event of ``symbol``."""
        t = TradeEventType.parse(event_type).value
        validate_symbol(symbol)
        self.subscriber.add(channel(symbol, t), False, symbol, t, handler)

    def subscribe_all(self, symbol: str, handler: Handler) -> None:
        """Every event type of one symbol."""
        validate_symbol(symbol)
        self.subscriber.add(symbol_pattern(symbol), True, symbol, None, handler)

    def subscribe_type(self, event_type: TradeEventType | str, handler: Handler) -> None:
        """One event type, every symbol."""
        t = TradeEventType.parse(event_type).value
        self.subscriber.add(type_pattern(t), True, None, t, handler)

    def subscribe_everything(self, handler: Handler) -> None:
        """Every event of every symbol (monitoring)."""
        self.subscriber.add(ALL_PATTERN, True, None, None, handler)

    def listen(self) -> None:
        """Block, delivering events to handlers, until ``stop()`` (from any thread or a signal handler)."""
        self.subscriber.listen()

    def stop(self) -> None:
        if self._subscriber is not None:
            self._subscriber.stop()

    def listen_in_thread(self) -> ListenerHandle:
        """Run ``listen()`` in a daemon thread; the handle has ``stop()``, ``join(timeout)``, ``wait_ready``."""
        return self.subscriber.listen_in_thread()

    def wait_until_listening(self, timeout: float) -> bool:
        """True once the listener is subscribed (events published from now on will be delivered)."""
        return self.subscriber.ready.wait(timeout)

    # --- log and state ------------------------------------------------------------------------------

    def read_log(self, symbol: str, after: str = "-", count: int | None = None) -> list[tuple[str, TradeEvent]]:
        """Logged events of ``symbol`` with a log id greater than ``after``, oldest first."""
        return run(self.client, read_log_steps(self.keys, symbol, after, count))

    def known_symbols(self) -> list[str]:
        return run(self.client, known_symbols_steps(self.keys))

    def apply_state_event(self, event: TradeEvent) -> bool:
        """Run the state projection for one event now (what the Celery state task does)."""
        return state.apply_event(
            self.client, self.keys, event, retention=self.settings.state_retention, now=time.time()
        )

    def get_order(self, symbol: str, order_id: str) -> dict[str, str] | None:
        return state.get_order(self.client, self.keys, symbol, order_id)

    def get_position(self, symbol: str, position_id: str) -> dict[str, str] | None:
        return state.get_position(self.client, self.keys, symbol, position_id)

    def get_open_orders(self, symbol: str) -> list[dict[str, str]]:
        return state.open_orders(self.client, self.keys, symbol)

    def get_active_positions(self, symbol: str) -> list[dict[str, str]]:
        return state.active_positions(self.client, self.keys, symbol)

    # --- connection ---------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """A live PING on a dedicated connection with a short timeout (no retries)."""
        try:
            if self._ping_conn is None:
                self._ping_conn = raw_connection(self.client, PING_TIMEOUT)
            self._ping_conn.send_command("PING")
            return self._ping_conn.read_response() in (b"PONG", "PONG", True)
        except (redis.RedisError, OSError):
            if self._ping_conn is not None:
                self._ping_conn.disconnect()
            return False

    def detached(self) -> RedisEventBus:
        """A bus on this one's client and key prefix with subscriptions and a listen loop of its own
        (no dispatcher; no I/O now). Closing it leaves this bus and its client alone."""
        other = copy.copy(self)
        other._subscriber, other._ping_conn, other._own_client = None, None, False
        p = self.publisher
        other.publisher = Publisher(
            other.client,
            other.keys,
            log_maxlen=p.log_maxlen,
            max_event_bytes=p.max_event_bytes,
            effects=p.effects,
            run_max=p.run_max,
        )
        return other

    def close(self) -> None:
        self.publisher.close()
        if self._subscriber is not None:
            self._subscriber.close()
        if self._ping_conn is not None:
            self._ping_conn.disconnect()
            self._ping_conn = None
        self._close_client()

    def _close_client(self) -> None:
        if self._own_client:
            self.client.close()

    def __enter__(self) -> RedisEventBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- queries as steps (bus/core/steps.py), shared with bus.aio ----------------------------------------


def read_log_steps(
    keys: Keys, symbol: str, after: str = "-", count: int | None = None
) -> Steps[list[tuple[str, TradeEvent]]]:
    start = after if after in ("-", "") else f"({after}"
    limit = ("COUNT", count) if count is not None else ()
    entries = cast(LogEntries, (yield Command(("XRANGE", keys.log(symbol), start or "-", "+", *limit))))
    out = []
    for log_id, fields in entries:
        event = decode_entry(fields)
        if event is not None:
            out.append((log_id.decode(), event))
    return out


def known_symbols_steps(keys: Keys) -> Steps[list[str]]:
    return sorted(text(s) for s in (yield Command(("SMEMBERS", keys.symbols()))))
