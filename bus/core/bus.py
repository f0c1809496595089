"""RedisEventBus: durable one-round-trip publish, self-healing subscriptions, state queries.

Publish runs ``publish.lua``: XADD to the symbol's log (``MAXLEN ~``) + PUBLISH on
``trades:{symbol}:{type}``, atomically. The broadcast is the event JSON with four leading fields,
``{"log_id", "prev", "prev_t", "bus", ...event}``: the entry's log id, the previous log id of the
symbol and of the symbol+type, and the key prefix. Subscribers use them to notice a gap and fetch
exactly the missing entries from the log (see bus/subscriber.py). ``publish_many`` runs
``publish_many.lua`` once per run of consecutive same-symbol events (at most ``publish_run_max``): the
same steps and broadcast per event, in batch order, for the cost of one script call per run. Below,
"EVALSHA publish" stands for one such call per run in a batch.

Dispatch protocol (implemented by bus/dispatch.py's ``Dispatcher``; any object with these works):

* ``__init__`` calls ``dispatcher.attach(client, keys)`` if it has ``attach``.
* ``routes = dispatcher.routes_for(event)`` -> sequence of routes (each has ``.name``).
* If ``routes`` and ``dispatcher.stages_in_bus_pipeline``: the bus builds a MULTI pipeline
  ``[SCRIPT LOAD..., (SADD symbols), EVALSHA publish, (EVALSHA state), <dispatcher.stage(pipe, event,
  payload, routes)>]`` and executes it once: log + broadcast + task messages commit together.
  ``stage`` returns the route names it queued (-> ``receipt.dispatched``).
* Else, if ``routes``: the publish script also ZADDs the log id to
  ``keys.pending_dispatch_for(symbol)`` (score: ms), and after it the bus calls
  ``dispatcher.send(event, payload, routes, log_id)`` -> ``(dispatched, not_dispatched)`` names
  (``send_many(items, log_ids)`` for publish_many, items = ``[(event, payload, routes)]``). The
  dispatcher ZREMs what it enqueued; what stays pending is re-dispatched by beat. A ``DispatchError``
  from the dispatcher propagates (strict mode); any other error is logged and every route is
  reported in ``not_dispatched`` (the event is logged either way: G1).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import redis

from bus.config import Settings
from bus.core import state
from bus.core.connection import _client_where, describe_server, make_client, raw_connection
from bus.core.keys import Keys, channel, validate_symbol
from bus.core.publisher import PUBLISH, Publisher, PublishReceipt
from bus.core.subscriber import Counters, ListenerHandle, Subscriber, decode_entry
from bus.core.wire import LogEntries
from bus.errors import BusConnectionError
from bus.events.model import TradeEvent, TradeEventType

__all__ = ["PUBLISH", "EventBusFactory", "PublishReceipt", "RedisEventBus"]

log = logging.getLogger(__name__)

#: stream entry fields written by publish.lua
LOG_TYPE_FIELD = b"type"
LOG_EVENT_FIELD = b"event"
#: seconds ``is_connected`` waits for PONG
PING_TIMEOUT = 0.5

Handler = Callable[[TradeEvent], Any]


class RedisEventBus(Publisher):
    """Publish TradeEvents to Redis, subscribe to them, query the state projection."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        settings: Settings | None = None,
        key_prefix: str | None = None,
        log_maxlen: int | None = None,
        max_event_bytes: int | None = None,
        apply_state: bool = False,
        dispatcher: Any = None,
    ) -> None:
        # Settings() would read the environment; a library class takes explicit arguments only.
        self.settings = settings if settings is not None else Settings.model_construct()
        s = self.settings
        self.url = url or (None if client is not None else s.bus_url)
        self._own_client = client is None
        self.client: redis.Redis = client if client is not None else make_client(self.url, s)  # type: ignore[arg-type]
        self.where = describe_server(self.url) if self.url else _client_where(self.client)
        self.keys = Keys(key_prefix or s.key_prefix)
        self.log_maxlen = int(log_maxlen or s.log_maxlen)
        self.max_event_bytes = int(max_event_bytes or s.max_event_bytes)
        self.apply_state = apply_state
        self.state_retention = s.state_retention
        self.dispatcher = dispatcher
        self._symbol_keys: dict[str, tuple[str, str, str]] = {}
        self._routes_cache: dict[tuple[str, TradeEventType], tuple[str, str]] = {}  # channel, type
        self._symbols_sent: set[str] = set()
        self._subscriber: Subscriber | None = None
        self._ping_conn: Any = None
        try:
            self.client.ping()
        except redis.ConnectionError as e:
            self._close_client()
            raise self._connection_error(e) from None
        except redis.TimeoutError as e:
            self._close_client()
            raise self._connection_error(e) from None
        if dispatcher is not None and hasattr(dispatcher, "attach"):
            dispatcher.attach(self.client, self.keys)

    def __repr__(self) -> str:
        return f"RedisEventBus({self.where!r}, prefix={self.keys.prefix!r})"

    def _connection_error(self, e: Exception) -> BusConnectionError:
        return BusConnectionError(
            f"Cannot connect to Redis at {self.where} ({type(e).__name__}: {e}). Is the Redis container running?"
        )

    # --- subscribe / listen -------------------------------------------------------------------------

    @property
    def subscriber(self) -> Subscriber:
        if self._subscriber is None:
            self._subscriber = Subscriber(self.client, self.keys, self.settings)
        return self._subscriber

    @property
    def counters(self) -> Counters:
        """delivered, handler_errors, malformed, recovered_from_log, gaps_lost, reconnects, foreign."""
        return self.subscriber.counters

    def subscribe(self, symbol: str, event_type: TradeEventType | str, handler: Handler) -> None:
        """Call ``handler(event)`` for each ``event_type`` event of ``symbol``."""
        t = TradeEventType.parse(event_type).value
        validate_symbol(symbol)
        self.subscriber.add(channel(symbol, t), False, symbol, t, handler)

    def subscribe_all(self, symbol: str, handler: Handler) -> None:
        """Every event type of one symbol."""
        from bus.core.keys import symbol_pattern

        validate_symbol(symbol)
        self.subscriber.add(symbol_pattern(symbol), True, symbol, None, handler)

    def subscribe_type(self, event_type: TradeEventType | str, handler: Handler) -> None:
        """One event type, every symbol."""
        from bus.core.keys import type_pattern

        t = TradeEventType.parse(event_type).value
        self.subscriber.add(type_pattern(t), True, None, t, handler)

    def subscribe_everything(self, handler: Handler) -> None:
        """Every event of every symbol (monitoring)."""
        from bus.core.keys import ALL_PATTERN

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
        start = after if after in ("-", "") else f"({after}"
        entries = cast(LogEntries, self.client.xrange(self.keys.log(symbol), start or "-", "+", count=count))
        out = []
        for log_id, fields in entries:
            event = decode_entry(fields)
            if event is not None:
                out.append((log_id.decode(), event))
        return out

    def known_symbols(self) -> list[str]:
        return sorted(s.decode() for s in self.client.smembers(self.keys.symbols()))  # type: ignore[union-attr]

    def apply_state_event(self, event: TradeEvent) -> bool:
        """Run the state projection for one event now (what the Celery state task does)."""
        return state.apply_event(self.client, self.keys, event, retention=self.state_retention, now=time.time())

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
        other._subscriber, other._ping_conn, other._own_client, other.dispatcher = None, None, False, None
        return other

    def close(self) -> None:
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


class EventBusFactory:
    """Build a bus from settings, as the reference README does."""

    @staticmethod
    def create_from_env(env_config: Settings, **kw: Any) -> RedisEventBus:
        """A bus for ``env_config``; unless ``TRADEBUS_DISPATCH=false`` (or ``dispatcher=`` is given),
        publish() also enqueues the routed Celery tasks on ``CELERY_BROKER_URL``."""
        if "dispatcher" not in kw and env_config.dispatch:
            from bus.dispatch.dispatcher import Dispatcher  # imports Celery: only when dispatching

            kw["dispatcher"] = Dispatcher.from_settings(env_config)
        return RedisEventBus(settings=env_config, **kw)
