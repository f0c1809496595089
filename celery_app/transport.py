"""kombu's Redis transport, made to survive any bytes on a queue and to bring a dead worker's messages back.

1. **One client per pool.** kombu 5.7's ``Channel.conn_or_acquire()`` builds a new ``redis.Redis`` (with
   ``global_keyprefix``, a ``PrefixedStrictRedis``) around the channel's connection pool for every
   operation it is not handed a client for: each task's QoS bookkeeping after BRPOP (MULTI ZADD+HSET) and
   each ack (MULTI ZREM+HDEL). The constructor copies redis-py's response-callback table; profiled on a
   solo worker here, it was 10-19% of the worker's CPU per task. A client holds no connection of its own
   (commands check one out of the pool), so this channel keeps one per pool and rebuilds it when kombu
   replaces the pool (after a connection loss ``_disconnect_pools`` drops it).

2. **Refused messages.** kombu parses each BRPOP'ed entry inside ``_brpop_read``; an entry that is not
   JSON, not an envelope, or whose body does not decode raises out of the event loop and the worker's main
   process exits ("Unrecoverable error") with the entry already popped, lost. Here such an entry (or one
   larger than ``max_message_bytes``) is handed, raw, to the transport's ``on_refused_message`` (set by
   celery_app.consumer: it dead-letters it) and consuming goes on. Envelopes are checked before kombu
   builds a Message from them, so nothing is half-registered as unacked.

3. **Held messages heartbeat** (celery_app.heartbeat): a consuming channel keeps the messages its worker
   holds fresh in ``unacked_index``, so the visibility timeout can be short.

4. **Priorities run higher first**, as on RabbitMQ: kombu keeps one list per priority step and its BRPOP
   takes the lowest step first (0 before 9); this channel asks for the highest first, so a route's
   ``priority`` means the same on both brokers. Messages go to the same lists either way: publishers on
   kombu's own transport interoperate.

``register()`` makes this the transport of ``redis://`` and ``rediss://`` URLs in the process (kombu's alias
table), so the app's broker URL keeps its plain scheme for the tools that read it (Flower picks its broker
page by scheme), and its Sentinel twin (``SentinelTransport``: kombu's SentinelChannel finding the master)
that of ``sentinel://`` URLs, so a Sentinel broker gets all of the above too. ``redis+socket://`` URLs keep
kombu's own transport and its behaviour.
"""

from __future__ import annotations

import logging
from bisect import bisect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from .config import SENTINEL_TRANSPORT_SCHEME, SINGLE_TRANSPORT_SCHEMES
from .heartbeat import HeldMessagesHeartbeat

log = logging.getLogger(__name__)


class RefusedMessage(Exception):
    """A queue entry that cannot become a kombu message; the text says why."""


class Message(virtual.Message):  # type: ignore[misc]
    """kombu's message, built only from a well-formed envelope (else RefusedMessage, nothing recorded)."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        problem = envelope_problem(payload, channel.codecs if channel is not None else {})
        if problem:
            raise RefusedMessage(problem)
        try:
            super().__init__(payload, channel=channel, **kwargs)
        except ValueError as e:  # binascii.Error: the body is not what its body_encoding says
            raise RefusedMessage(f"body does not decode as {payload['properties'].get('body_encoding')}: {e}") from e


_TEXT = (str, type(None))


def envelope_problem(payload: Any, codecs: dict[str, Any]) -> str | None:
    """What keeps ``payload`` from being a kombu Redis envelope (the fields kombu and its QoS read), or None."""
    if not isinstance(payload, dict):
        return f"not a message envelope (a JSON {type(payload).__name__})"
    props = payload.get("properties")
    if not isinstance(props, dict):
        return "not a message envelope (no properties object)"
    tag = props.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        return "no delivery_tag string"
    info = props.get("delivery_info")
    if not (isinstance(info, dict) and isinstance(info.get("exchange"), str)
            and isinstance(info.get("routing_key"), str)):  # fmt: skip
        return "delivery_info lacks exchange / routing_key strings"
    if not isinstance(payload.get("headers") or {}, dict):
        return "headers is not an object"
    get = payload.get
    if not (isinstance(get("body"), _TEXT) and isinstance(get("content-type"), _TEXT)
            and isinstance(get("content-encoding"), _TEXT)):  # fmt: skip
        return "body, content-type or content-encoding is not a string"
    encoding = props.get("body_encoding")
    if encoding and not (isinstance(encoding, str) and (encoding.lower() == "utf-8" or encoding in codecs)):
        return f"unknown body_encoding {encoding!r:.100}"
    return None


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    Message = Message
    from_transport_options = kombu_redis.Channel.from_transport_options + (  # type: ignore[assignment]
        "max_message_bytes",
        "unacked_refresh_interval",
    )
    # Entries larger than this are refused unparsed (0: no limit). Set from the settings in celery_app.config.
    max_message_bytes = 0
    # Seconds between refreshes of held messages (0: no heartbeat, kombu's behaviour).
    unacked_refresh_interval = 0.0
    # The queue of the entry being delivered, so a consumer that refuses it can name it.
    delivering_queue: str | None = None
    _sync_client: Any = None
    _heartbeat: HeldMessagesHeartbeat | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # kombu orders BRPOP's keys (and _get's tries) by priority_steps: highest step first here
        self._steps_ascending = sorted(self.priority_steps)
        self.priority_steps = self._steps_ascending[::-1]

    def priority(self, n: int) -> int:
        """The step (list) of priority ``n``: as kombu maps it, whatever order the steps are kept in."""
        steps = self._steps_ascending
        return int(steps[bisect(steps, n) - 1])

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        cached = self._sync_client
        if cached is None or cached.connection_pool is not self.pool:
            cached = self._sync_client = self._create_client()
        yield cached

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        consumer_tag = super().basic_consume(queue, *args, **kwargs)
        # Task queues only: fanout (remote control) consumers hold nothing.
        wanted = self.ack_emulation and self.unacked_refresh_interval and queue not in self._fanout_queues
        if wanted and self._heartbeat is None:
            self._heartbeat = HeldMessagesHeartbeat(self, self.unacked_refresh_interval)
            self._heartbeat.start()
        return consumer_tag

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        super().close()

    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.7's _brpop_read, with the entry's decoding and delivery guarded by _deliver_entry.
        try:
            try:
                dest_item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # a broken connection: disconnect so the next iteration reconnects
                self.client.connection.disconnect()
                raise
            if not dest_item:
                raise Empty()
            dest, item = dest_item
            queue = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            self._deliver_entry(item, queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's own reset (typed bool there)
            self._flush_brpop_reauth()

    def _deliver_entry(self, item: bytes, queue: str) -> None:
        if self.max_message_bytes and len(item) > self.max_message_bytes:
            return self.refuse(item, queue, f"oversized: {len(item)} bytes, limit {self.max_message_bytes}")
        try:
            payload = loads(bytes_to_str(item))
        # The decoder (kombu's, with its type hooks) raises ValueError, KeyError, TypeError or
        # RecursionError on hostile input: any of them means the entry is not a message.
        except Exception as e:  # noqa: BLE001
            return self.refuse(item, queue, f"not JSON: {type(e).__name__}: {e}")
        self.delivering_queue = queue
        try:
            self.connection._deliver(payload, queue)
        except RefusedMessage as e:
            self.refuse(item, queue, str(e))
        finally:
            self.delivering_queue = None

    def _deliver_fanout_message(self, message: Any, exchange: str) -> bool:
        try:
            return bool(super()._deliver_fanout_message(message, exchange))
        except RefusedMessage as e:
            self.refuse(dumps(message).encode(), exchange, str(e))
            return False

    def refuse(self, raw: bytes, queue: str, reason: str) -> None:
        """Hand an entry no consumer can take to ``on_refused_message``; the loop goes on whatever it does."""
        handler: Callable[[bytes, str, str], None] | None = getattr(self.connection, "on_refused_message", None)
        try:
            if handler is None:
                raise LookupError("no on_refused_message handler on this transport")
            handler(raw, queue, reason)
        except Exception:  # noqa: BLE001 - the message is gone either way; keep its evidence in the log
            log.exception("refused a message on %s (%s), not dead-lettered: %r", queue, reason, raw[:2048])


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel
    # Called with (raw bytes, queue, reason) for each entry a channel refuses (celery_app.consumer sets it).
    on_refused_message: Callable[[bytes, str, str], None] | None = None


class SentinelChannel(Channel, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """This channel on the master Sentinel names (kombu's SentinelChannel builds the pool): each new
    connection asks the sentinels, so after a failover the consumer's reconnect reaches the new master,
    where the held messages' heartbeat and the restore sweep carry on."""

    # both option lists: the class attribute of Channel would otherwise hide master_name and the others
    from_transport_options = tuple(  # type: ignore[assignment]
        dict.fromkeys(Channel.from_transport_options + kombu_redis.SentinelChannel.from_transport_options)
    )


class SentinelTransport(Transport):
    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port  # type: ignore[assignment]


def register() -> None:
    """Serve ``redis://``, ``rediss://`` and ``sentinel://`` broker URLs with these transports in this process."""
    schemes = {scheme: "Transport" for scheme in SINGLE_TRANSPORT_SCHEMES}
    schemes[SENTINEL_TRANSPORT_SCHEME] = "SentinelTransport"
    for scheme, cls in schemes.items():
        kombu.transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:{cls}"
        # kombu caches each alias's class on first use (get_transport_cls): forget the stock one
        kombu.transport._transport_cache.pop(scheme, None)
