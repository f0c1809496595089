"""Subscriber: pub/sub delivery that heals itself from the log (self-healing subscribers).

One unpooled connection (no silent reconnects inside redis-py's PubSub: FACTS.md). Every Redis
subscription (a channel or a pattern) remembers, per symbol, the last log id it delivered. A
broadcast carries ``log_id``, ``prev`` (previous id of the symbol) and ``prev_t`` (previous id of the
symbol+type); when the relevant ``prev`` is newer than what the subscription delivered, the missing
entries are read from the log (XRANGE, filtered by type) and delivered first, in order, once each.
After every (re)connect the subscriptions catch up from the log the same way. A message whose id
was already delivered is dropped. Messages from other tools (no ``log_id``) are validated in full
and delivered; broadcasts of another key prefix (another tenant) are ignored.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from typing import Any

import orjson
import redis

from bus.config import Settings
from bus.core.catchup import CatchUp
from bus.core.connection import node_pool, raw_connection
from bus.core.keys import Keys
from bus.core.subscription import Counters, Handler, Subscription
from bus.core.wire import MAX_SEQ, parse_id
from bus.errors import BusPermissionError, EventValidationError
from bus.events.model import TradeEvent
from bus.observability.logs import event_fields

__all__ = ["ListenerHandle", "Subscriber"]

log = logging.getLogger(__name__)

#: seconds the loop waits for data before checking stop() and health
POLL_SECONDS = 0.1
BACKOFF_START, BACKOFF_MAX = 0.05, 2.0


class ListenerHandle:
    """A listener running in a background thread."""

    def __init__(self, subscriber: Subscriber, thread: threading.Thread) -> None:
        self._subscriber, self.thread = subscriber, thread

    def stop(self) -> None:
        self._subscriber.stop()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def wait_ready(self, timeout: float) -> bool:
        return self._subscriber.ready.wait(timeout)

    @property
    def error(self) -> BusPermissionError | None:
        """Why the listener stopped by itself (Redis refused it a channel or key), else None."""
        return self._subscriber.error


class Subscriber:
    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings) -> None:
        self._client, self._keys, self._settings = client, keys, settings
        self._prefix = keys.prefix
        self._subs: dict[bytes, Subscription] = {}
        self._unsent: list[Subscription] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._conn: Any = None
        self._idle = threading.Event()  # set while no listen() loop runs
        self._idle.set()
        self.counters = Counters()
        self._catch_up = CatchUp(client, keys, self.counters, self._deliver)
        self.error: BusPermissionError | None = None  # why the last loop stopped by itself

    # --- registration ----------------------------------------------------------------------------

    def add(self, name: str, pattern: bool, symbol: str | None, type_value: str | None,
            handler: Handler) -> None:  # fmt: skip
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        with self._lock:
            sub = self._subs.get(name.encode())
            if sub is None:
                sub = self._subs[name.encode()] = Subscription(name, pattern, symbol, type_value)
                self._unsent.append(sub)
            sub.handlers.append(handler)

    # --- loop ------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``listen()`` to return (within ~0.1 s). Safe from any thread and from signal handlers.

        The request is kept until a loop sees it: a stop() before listen() makes that listen() return.
        """
        self._stop.set()

    def listen_in_thread(self) -> ListenerHandle:
        """Run ``listen()`` in a daemon thread; if a listener thread already runs, its handle."""
        with self._lock:
            running = getattr(self, "_loop_thread", None)
            if not self._idle.is_set() and running is not None and running.is_alive():
                return ListenerHandle(self, running)
            thread = threading.Thread(target=self._listen_quietly, name="tradebus-listener",
                                      daemon=True)  # fmt: skip
            self._claim(thread)
        thread.start()
        return ListenerHandle(self, thread)

    def listen(self) -> None:
        """Block, delivering events, until ``stop()``. One loop per bus: subscriptions added while it
        runs join it; a second concurrent ``listen()`` raises RuntimeError."""
        with self._lock:
            self._claim(threading.current_thread())
        self._listen()

    def _claim(self, thread: threading.Thread) -> None:
        running = getattr(self, "_loop_thread", None)
        if not self._idle.is_set() and running is not None and running is not thread:
            raise RuntimeError(
                f"this bus is already listening (thread {running.name}); subscriptions added now join "
                "that loop, or use another RedisEventBus for a separate listener"
            )
        self._idle.clear()
        self._loop_thread = thread

    def _listen_quietly(self) -> None:
        with contextlib.suppress(BusPermissionError):  # logged by _listen; ListenerHandle.error has it
            self._listen()

    def _listen(self) -> None:
        delay = BACKOFF_START
        self.error = None
        try:
            while not self._stop.is_set():
                try:
                    if self._conn is None:
                        self._connect()
                        delay = BACKOFF_START
                    elif self._unsent:
                        self._subscribe(self._take_unsent())
                    self._pump()
                except redis.exceptions.NoPermissionError as e:
                    # an ACL refusal is permanent: stop with an error that says what to grant
                    self.error = self._permission_error(e)
                    log.error("%s", self.error)
                    raise self.error from None
                except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                    self._drop()
                    self.counters.reconnects += 1
                    log.warning("subscriber connection lost (%s: %s); reconnecting in %.2fs",
                                type(e).__name__, e, delay)  # fmt: skip
                    self._stop.wait(delay * (0.5 + random.random() / 2))
                    delay = min(delay * 2, BACKOFF_MAX)
        finally:
            self._drop()
            self._stop.clear()
            self._idle.set()

    def _permission_error(self, e: Exception) -> BusPermissionError:
        user = node_pool(self._client).connection_kwargs.get("username") or "default"
        with self._lock:
            names = sorted((s.pattern, s.name) for s in self._subs.values())
        channels = [n for p, n in names if not p]
        patterns = [n for p, n in names if p]
        return BusPermissionError(
            f"Redis refused the subscriber of ACL user {user!r} ({e}); the listener stopped. It "
            f"subscribes to channels {channels} and patterns {patterns}: grant the user &trades:* "
            "(a pattern subscription needs its exact pattern granted, e.g. &trades:XAUUSD:*, or "
            f"allchannels) and read access to ~{self._prefix}:*"
        )

    def _take_unsent(self) -> list[Subscription]:
        with self._lock:
            subs, self._unsent = self._unsent, []
        return subs

    def _drop(self) -> None:
        self.ready.clear()
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and wait for it to release its connection (never closed under its feet)."""
        if not self._idle.is_set():
            self.stop()
            if threading.current_thread() is not getattr(self, "_loop_thread", None):
                self._idle.wait(timeout)

    def _connect(self) -> None:
        self._take_unsent()  # everything is (re)subscribed below
        self._conn = raw_connection(self._client, self._settings.redis_socket_timeout)
        self._conn.connect()
        self._last_rx = time.monotonic()
        self._ping_sent = 0.0
        with self._lock:
            subs = list(self._subs.values())
        self._subscribe(subs)

    def _subscribe(self, subs: list[Subscription]) -> None:
        """SUBSCRIBE/PSUBSCRIBE, wait for the confirmations, catch up from the log, then go on."""
        if not subs:
            self.ready.set() if self._subs else None
            return
        if any(s.baseline is None for s in subs):
            secs, micros = self._client.time()
            base = (int(secs) * 1000 + int(micros) // 1000 - 1, MAX_SEQ)
            for s in subs:
                if s.baseline is None:
                    s.baseline = base
        conn = self._conn
        channels = [s.name for s in subs if not s.pattern]
        patterns = [s.name for s in subs if s.pattern]
        if channels:
            conn.send_command("SUBSCRIBE", *channels)
        if patterns:
            conn.send_command("PSUBSCRIBE", *patterns)
        pending, early = len(channels) + len(patterns), []
        deadline = time.monotonic() + self._settings.redis_socket_timeout
        while pending:
            if not conn.can_read(timeout=max(0.0, deadline - time.monotonic())):
                raise redis.TimeoutError("no reply to SUBSCRIBE")
            reply = conn.read_response()
            if reply[0] in (b"subscribe", b"psubscribe"):
                pending -= 1
            else:
                early.append(reply)
        for s in subs:
            self._catch_up.after_subscribe(s)
        for reply in early:
            self._on_reply(reply)
        self.ready.set()

    def _pump(self) -> None:
        conn = self._conn
        if not conn.can_read(timeout=POLL_SECONDS):
            self._health_check()
            return
        on_reply, stop = self._on_reply, self._stop
        for _ in range(10_000):
            on_reply(conn.read_response())
            if stop.is_set() or not conn.can_read(timeout=0):
                break
        self._last_rx = time.monotonic()
        self._ping_sent = 0.0

    def _health_check(self) -> None:
        """Health check: PING an idle connection; no PONG within the socket timeout means it is dead."""
        now = time.monotonic()
        interval = self._settings.redis_health_check_interval or 15
        if self._ping_sent:
            if now - self._ping_sent > self._settings.redis_socket_timeout:
                raise redis.TimeoutError("subscriber connection did not answer PING")
        elif now - self._last_rx > interval:
            self._conn.send_command("PING")
            self._ping_sent = now

    # --- messages --------------------------------------------------------------------------------

    def _on_reply(self, reply: Any) -> None:
        kind = reply[0]
        if kind == b"pmessage":
            sub = self._subs.get(reply[1])
            if sub is not None:
                self._on_message(sub, reply[3])
        elif kind == b"message":
            sub = self._subs.get(reply[1])
            if sub is not None:
                self._on_message(sub, reply[2])
        # pong and (p)subscribe confirmations need nothing

    def _on_message(self, sub: Subscription, data: bytes) -> None:
        try:
            obj = orjson.loads(data)
            if type(obj) is not dict:
                raise EventValidationError("a broadcast must be a JSON object", field="json")
            log_id = obj.pop("log_id", None)
            if log_id is None:  # published by another tool: validate everything
                self._deliver(sub, TradeEvent.from_dict(obj))
                return
            prev, prev_t, bus = obj.pop("prev", ""), obj.pop("prev_t", ""), obj.pop("bus", None)
            if bus != self._prefix:
                self.counters.foreign += 1
                return
            event = TradeEvent.from_trusted_dict(obj)
            lid = parse_id(log_id)
        except (orjson.JSONDecodeError, EventValidationError, ValueError, TypeError) as e:
            self.counters.malformed += 1
            log.warning("malformed message on %s skipped: %s", sub.name, e)
            return
        symbol = event.symbol
        last = sub.last.get(symbol) or sub.baseline
        if last is not None:
            if lid <= last:
                return  # already delivered (from the log)
            before = prev_t if sub.event_type else prev
            if before and parse_id(before) > last:
                self._catch_up.fill_gap(sub, symbol, last, log_id)
        self._deliver(sub, event)
        sub.last[symbol] = lid

    def _deliver(self, sub: Subscription, event: TradeEvent) -> None:
        for handler in sub.handlers:
            try:
                handler(event)
                self.counters.delivered += 1
            except Exception:  # noqa: BLE001 - one bad handler must not stop the others or the loop
                self.counters.handler_errors += 1
                log.exception("handler %r failed on event %s", handler, event.event_id, extra=event_fields(event))
