"""RedisEventBus: durable one-round-trip publish, self-healing subscriptions, state queries.

Publish runs ``publish.lua``: XADD to the symbol's log (``MAXLEN ~``) + PUBLISH on
``trades:{symbol}:{type}``, atomically. The broadcast is the event JSON with four leading fields,
``{"log_id", "prev", "prev_t", "bus", ...event}``: the entry's log id, the previous log id of the
symbol and of the symbol+type, and the key prefix. Subscribers use them to notice a gap and fetch
exactly the missing entries from the log (see bus/subscriber.py).

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

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from . import state
from .channels import Keys, channel, validate_symbol
from .config import Settings
from .errors import BusConnectionError, DispatchError
from .events import TradeEvent, TradeEventType
from .scripts import LuaScript, execute_pipeline
from .subscriber import Counters, ListenerHandle, Subscriber, decode_entry

log = logging.getLogger(__name__)

PUBLISH = LuaScript("publish.lua")
#: stream entry fields written by publish.lua
LOG_TYPE_FIELD = b"type"
LOG_EVENT_FIELD = b"event"
#: seconds ``is_connected`` waits for PONG
PING_TIMEOUT = 0.5

Handler = Callable[[TradeEvent], Any]


@dataclass(frozen=True)
class PublishReceipt:
    event_id: str
    log_id: str
    subscribers: int
    dispatched: tuple[str, ...] = ()  # route names enqueued
    not_dispatched: tuple[str, ...] = ()  # route names the broker did not take (re-dispatched by beat)


def describe_server(url: str) -> str:
    """``host:port`` (or the socket path) of a Redis URL, never its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def make_client(url: str, settings: Settings) -> redis.Redis:
    """A redis-py client with the settings' timeouts, keepalive, health checks and TLS options."""
    kw: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
        "health_check_interval": settings.redis_health_check_interval,
        # few, fast retries: a long outage must surface as an error, not a hang (G1)
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        "decode_responses": False,
    }
    if urlsplit(url).scheme != "unix":
        kw["socket_keepalive"] = True
    kw.update(settings.ssl_options())
    return redis.Redis.from_url(url, **kw)


class RedisEventBus:
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
        self.dispatcher = dispatcher
        self._symbol_keys: dict[str, tuple[str, str, str]] = {}
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
            f"Cannot connect to Redis at {self.where} ({type(e).__name__}: {e}). "
            "Is the Redis container running?"
        )

    # --- publish ----------------------------------------------------------------------------------

    def _keys_for(self, symbol: str) -> tuple[str, str, str]:
        k = self._symbol_keys.get(symbol)
        if k is None:
            k = self._symbol_keys[symbol] = (
                self.keys.log(symbol), self.keys.heads(symbol), self.keys.pending_dispatch_for(symbol)
            )
        return k

    def _prepare(self, event: Any) -> tuple[bytes, list[Any], list[Any], Sequence[Any]]:
        if not isinstance(event, TradeEvent):
            raise TypeError(f"publish() takes a TradeEvent, not {type(event).__name__}")
        payload = event.encode(self.max_event_bytes)
        routes: Sequence[Any] = self.dispatcher.routes_for(event) if self.dispatcher is not None else ()
        track = bool(routes) and not self.dispatcher.stages_in_bus_pipeline
        t = event.event_type.value
        args = [payload, channel(event.symbol, t), t, self.log_maxlen,
                b"1" if track else b"0", int(time.time() * 1000) if track else 0, self.keys.prefix]  # fmt: skip
        return payload, list(self._keys_for(event.symbol)), args, routes

    def publish(self, event: TradeEvent) -> PublishReceipt:
        """Log + broadcast ``event`` atomically in one round trip (plus routed tasks, see module doc)."""
        payload, keys, args, routes = self._prepare(event)
        staged = bool(routes) and self.dispatcher.stages_in_bus_pipeline
        try:
            if not staged and not self.apply_state and event.symbol in self._symbols_sent:
                log_id, n = PUBLISH.call(self.client, keys, args)
                names: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
            else:
                (log_id, n), names = self._publish_pipeline([(event, payload, keys, args, routes)])[0]
            log_id = log_id.decode()
            if routes and not staged:
                names = self._send([(event, payload, routes)], [log_id])[0]
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise self._connection_error(e) from None
        return PublishReceipt(event.event_id, log_id, int(n), names[0], names[1])

    def publish_many(self, events: Iterable[TradeEvent]) -> list[PublishReceipt]:
        """Publish a batch in one pipeline (one round trip). Nothing is sent if any event is invalid."""
        prepared = [(e, *self._prepare(e)) for e in events]
        if not prepared:
            return []
        try:
            results = self._publish_pipeline(prepared)
            receipts: list[PublishReceipt] = []
            to_send = [(i, e, p, r) for i, (e, p, _, _, r) in enumerate(prepared)
                       if r and not self.dispatcher.stages_in_bus_pipeline]  # fmt: skip
            sent: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}
            if to_send:
                outcome = self._send([(e, p, r) for _, e, p, r in to_send],
                                     [results[i][0][0].decode() for i, *_ in to_send])  # fmt: skip
                sent = {i: o for (i, *_), o in zip(to_send, outcome, strict=True)}
            for i, (event, *_rest) in enumerate(prepared):
                (log_id, n), names = results[i]
                names = sent.get(i, names)
                receipts.append(PublishReceipt(event.event_id, log_id.decode(), int(n), names[0], names[1]))
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise self._connection_error(e) from None
        return receipts

    def _publish_pipeline(self, batch: list[Any]) -> list[tuple[list[Any], tuple[tuple[str, ...], tuple[str, ...]]]]:
        """One pipeline for the batch; MULTI when the dispatcher stages task messages in it."""
        staged_any = self.dispatcher is not None and self.dispatcher.stages_in_bus_pipeline and any(b[4] for b in batch)
        pipe = self.client.pipeline(transaction=staged_any)
        scripts = (PUBLISH, state.SCRIPT) if self.apply_state else (PUBLISH,)
        if staged_any:  # a NOSCRIPT inside MULTI would let the task messages go out without the log
            for s in scripts:
                s.load(pipe)
        new_symbols = {b[0].symbol for b in batch} - self._symbols_sent
        if new_symbols:
            pipe.sadd(self.keys.symbols(), *sorted(new_symbols))
        slots: list[tuple[int, tuple[str, ...]]] = []
        for event, payload, keys, args, routes in batch:
            PUBLISH.stage(pipe, keys, args)
            at = len(pipe.command_stack) - 1
            if self.apply_state:
                state.stage_apply(pipe, self.keys, event)
            staged: tuple[str, ...] = ()
            if routes and self.dispatcher.stages_in_bus_pipeline:
                staged = tuple(self.dispatcher.stage(pipe, event, payload, routes) or ())
            slots.append((at, staged))
        results = execute_pipeline(pipe, scripts)
        for r in results:
            if isinstance(r, (redis.ConnectionError, redis.TimeoutError)):
                raise r
        out = []
        for at, staged in slots:
            res = results[at]
            if isinstance(res, Exception):
                raise res
            out.append((res, (staged, ())))
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:  # state or staged dispatch failed after the event was logged: report, do not lose it
            log.error("publish pipeline: %d command(s) failed after logging: %s", len(failed), failed[0])
            if staged_any:
                out = [(res, ((), staged)) for res, (staged, _) in out]
        self._symbols_sent |= new_symbols
        return out

    def _send(self, items: list[Any], log_ids: list[str]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        d = self.dispatcher
        try:
            if len(items) == 1 or not hasattr(d, "send_many"):
                return [tuple(d.send(e, p, r, lid)) for (e, p, r), lid in zip(items, log_ids, strict=True)]  # type: ignore[misc]
            return list(d.send_many(items, log_ids))
        except DispatchError:
            raise
        except Exception:  # noqa: BLE001 - the event is logged; beat re-dispatches what stays pending
            log.exception("dispatch failed; %d event(s) left pending for re-dispatch", len(items))
            return [((), tuple(x.name for x in r)) for _, _, r in items]

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
        from .channels import symbol_pattern

        validate_symbol(symbol)
        self.subscriber.add(symbol_pattern(symbol), True, symbol, None, handler)

    def subscribe_type(self, event_type: TradeEventType | str, handler: Handler) -> None:
        """One event type, every symbol."""
        from .channels import type_pattern

        t = TradeEventType.parse(event_type).value
        self.subscriber.add(type_pattern(t), True, None, t, handler)

    def subscribe_everything(self, handler: Handler) -> None:
        """Every event of every symbol (monitoring)."""
        from .channels import ALL_PATTERN

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
        entries = self.client.xrange(self.keys.log(symbol), start or "-", "+", count=count)
        out = []
        for log_id, fields in entries:  # type: ignore[union-attr]
            event = decode_entry(fields)
            if event is not None:
                out.append((log_id.decode(), event))
        return out

    def known_symbols(self) -> list[str]:
        return sorted(s.decode() for s in self.client.smembers(self.keys.symbols()))  # type: ignore[union-attr]

    def apply_state_event(self, event: TradeEvent) -> bool:
        """Run the state projection for one event now (what the Celery state task does)."""
        return state.apply_event(self.client, self.keys, event)

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


def raw_connection(client: redis.Redis, timeout: float | None) -> Any:
    """A new, unpooled connection with the client's settings and no retries (pub/sub, PING)."""
    pool = client.connection_pool
    kw = dict(pool.connection_kwargs)
    kw.update(retry=Retry(ExponentialBackoff(), 0), health_check_interval=0, protocol=2)
    if timeout is not None:
        kw.update(socket_timeout=timeout, socket_connect_timeout=timeout)
    return pool.connection_class(**kw)


def _client_where(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return str(kw["path"])
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"


class EventBusFactory:
    """Build a bus from settings, as the reference README does."""

    @staticmethod
    def create_from_env(env_config: Settings, **kw: Any) -> RedisEventBus:
        return RedisEventBus(settings=env_config, **kw)
