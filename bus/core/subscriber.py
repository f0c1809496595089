"""Subscriber: pub/sub delivery that heals itself from the log (self-healing subscribers).

One unpooled connection (no silent reconnects inside redis-py's PubSub: FACTS.md). Every Redis
subscription (a channel or a pattern) remembers, per symbol, the last log id it delivered. A
broadcast carries ``log_id``, ``prev`` (previous id of the symbol) and ``prev_t`` (previous id of the
symbol+type); when the relevant ``prev`` is newer than what the subscription delivered, the missing
entries are read from the log (XRANGE, filtered by type) and delivered first, in order, once each.
After every (re)connect the subscriptions catch up from the log the same way. A message whose id
was already delivered is dropped. Messages from other tools (no ``log_id``) are validated in full
and delivered; broadcasts of another key prefix (another tenant) are ignored. Those decisions and the
log reads are the I/O-free core in bus/core/healing.py, which bus.aio's subscriber shares; this module
owns the blocking connection, the reconnect loop and the handlers.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import redis

from bus.config import Settings
from bus.core.connection import node_pool, raw_connection
from bus.core.healing import (
    Healer,
    Liveness,
    is_confirmation,
    message_of,
    permission_error,
    subscribe_commands,
)
from bus.core.keys import Keys
from bus.core.steps import run
from bus.core.subscription import Counters, Handler, LostHandler, Subscription
from bus.errors import BusPermissionError
from bus.events.model import TradeEvent
from bus.observability import tracing
from bus.observability.logs import event_fields

__all__ = ["ListenerHandle", "Subscriber"]

log = logging.getLogger(__name__)
# Jitter from a generator of our own: the global one belongs to the application (which may seed it).
_JITTER = random.Random()

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
    def error(self) -> BaseException | None:
        """Why the listener stopped by itself (a BusPermissionError when Redis refused it a channel or
        key; anything else that escaped the loop), else None."""
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
        self._healer = Healer(keys, self.counters)
        self.error: BaseException | None = None  # why the last loop stopped by itself

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

    def on_lost_events(self, callback: LostHandler) -> None:
        """Call ``callback(LostEvents)`` (on the listener's thread) when events a subscription needs
        were trimmed from the log before it read them (bus/core/catchup.py)."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        self._healer.catch_up.lost_handlers.append(callback)

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
        try:
            self._listen()
        except BusPermissionError:
            pass  # logged by _listen; ListenerHandle.error has it
        except BaseException as e:  # noqa: BLE001 - a thread's death is otherwise silent: say why
            self.error = e
            log.critical("subscriber listener stopped: %s: %s", type(e).__name__, e, exc_info=True)

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
                    self._recover(e, delay, "subscriber connection lost")
                    delay = min(delay * 2, BACKOFF_MAX)
                except Exception as e:  # noqa: BLE001 - nothing a message or a reply holds may end the loop
                    self.counters.loop_errors += 1
                    log.exception("unexpected error in the subscriber loop")
                    self._recover(e, delay, "subscriber loop failed")  # a fresh connection heals from the log
                    delay = min(delay * 2, BACKOFF_MAX)
        finally:
            self._drop()
            self._stop.clear()
            self._idle.set()

    def _recover(self, e: Exception, delay: float, what: str) -> None:
        """Drop the connection and wait ``delay`` (jittered): the next round reconnects, resubscribes
        and catches up from the log (self-healing subscribers)."""
        self._drop()
        self.counters.reconnects += 1
        log.warning("%s (%s: %s); reconnecting in %.2fs", what, type(e).__name__, e, delay)
        self._stop.wait(delay * (0.5 + _JITTER.random() / 2))

    def _permission_error(self, e: Exception) -> BusPermissionError:
        user = node_pool(self._client).connection_kwargs.get("username")
        with self._lock:
            subs = list(self._subs.values())
        return permission_error(e, user, subs, self._prefix)

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
        s = self._settings
        self._liveness = Liveness(s.redis_health_check_interval, s.redis_socket_timeout, time.monotonic())
        with self._lock:
            subs = list(self._subs.values())
        self._subscribe(subs)

    def _subscribe(self, subs: list[Subscription]) -> None:
        """SUBSCRIBE/PSUBSCRIBE, wait for the confirmations, catch up from the log, then go on."""
        if not subs:
            self.ready.set() if self._subs else None
            return
        run(self._client, self._healer.baseline(subs))
        conn = self._conn
        pending, early = 0, []
        for command in subscribe_commands(subs):
            conn.send_command(*command)
            pending += len(command) - 1
        deadline = time.monotonic() + self._settings.redis_socket_timeout
        while pending:
            if not conn.can_read(timeout=max(0.0, deadline - time.monotonic())):
                raise redis.TimeoutError("no reply to SUBSCRIBE")
            reply = conn.read_response()
            if is_confirmation(reply):
                pending -= 1
            else:
                early.append(reply)
        for s in subs:
            run(self._client, self._healer.catch_up.after_subscribe(s), self._deliver)
        for reply in early:
            self._on_reply(reply)
        self.ready.set()

    def _pump(self) -> None:
        conn = self._conn
        if not conn.can_read(timeout=POLL_SECONDS):
            if self._liveness.ping_due(time.monotonic()):
                conn.send_command("PING")
            return
        on_reply, stop = self._on_reply, self._stop
        for _ in range(10_000):
            on_reply(conn.read_response())
            if stop.is_set() or not conn.can_read(timeout=0):
                break
        self._liveness.heard(time.monotonic())

    # --- messages --------------------------------------------------------------------------------

    def _on_reply(self, reply: Any) -> None:
        found = message_of(self._subs, reply)
        if found is None:
            return  # pong and (p)subscribe confirmations need nothing
        sub, chan, data = found
        healer = self._healer
        arrival = healer.arrival(sub, chan, data)
        if arrival is None:
            return
        if arrival.suspect and not run(self._client, healer.settle(sub, arrival), self._deliver):
            return
        self._deliver(sub, arrival.event)
        healer.delivered(sub, arrival)

    def _deliver(self, sub: Subscription, event: TradeEvent) -> None:
        with tracing.delivery_span(sub.name, event):  # a child of the event's publish, when traced
            for handler in sub.handlers:
                try:
                    handler(event)
                    self.counters.delivered += 1
                except Exception:  # noqa: BLE001 - one bad handler must not stop the others or the loop
                    self.counters.handler_errors += 1
                    log.exception("handler %r failed on event %s", handler, event.event_id, extra=event_fields(event))
