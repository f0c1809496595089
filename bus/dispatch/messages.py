"""Celery task messages built by hand, exactly as kombu's Redis transport writes them.

``apply_async`` costs ~350 us of client Python per task and one LPUSH per task. Building the same
message here lets the dispatcher put several task messages (and, when the broker is the bus's Redis
server, the event log write) into ONE pipeline. The steps mirror, in order:

1. ``celery.app.amqp.AMQP.as_task_v2``   -> headers, properties, body (Celery's protocol 2; called as is)
2. ``kombu.Producer.publish``            -> JSON-serialise the body, delivery_mode 2 (persistent)
3. ``virtual.Channel.prepare_message``    -> the message dict, properties.delivery_info, priority
4. ``virtual.Channel._inplace_augment_message`` -> base64 body, body_encoding, delivery_tag (unique, uuid-shaped),
   delivery_info.exchange = '' (Celery's anon exchange for direct queues) and routing_key = queue
5. ``redis.Channel._put`` -> LPUSH to the queue's priority sub-list (``queue\\x06\\x16<step>``)

Between 1 and 2 the dispatcher fires ``before_task_publish`` (bus/dispatch/signals.py), as Celery's task
sender does, so a receiver's headers (a ``traceparent``) are in what is written.

tests/test_dispatch_messages.py compares the result with what ``send_task`` writes, and runs it on a
real worker. Celery is imported lazily: ``import bus`` stays Celery-free.
"""

from __future__ import annotations

import base64
import itertools
import os
import socket
import uuid
from bisect import bisect
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import orjson
import redis

from bus.dispatch.amqp import CONFIRM_OPTIONS, amqp_queue_config
from bus.dispatch.names import QUEUES
from bus.observability import tracing

if TYPE_CHECKING:
    from bus.config import Settings

# kombu.transport.redis.PRIORITY_STEPS and Channel.sep (checked against kombu in the tests).
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"
# Route priorities run 0-9, higher first on both brokers: RabbitMQ queues are declared with this
# x-max-priority (Celery's task_queue_max_priority); celery_app.transport takes Redis's higher lists first.
MAX_PRIORITY = 9
# Celery publish settings the dispatcher and the worker share (bounded: apply_async must not hang).
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def redis_queue_key(queue: str, priority: int = 0, global_keyprefix: str = "") -> str:
    """The Redis list kombu pushes a message of this priority to (``Channel._q_for_pri``)."""
    step = PRIORITY_STEPS[bisect(PRIORITY_STEPS, max(0, min(priority, 9))) - 1]
    return f"{global_keyprefix}{queue}{PRIORITY_SEP}{step}" if step else f"{global_keyprefix}{queue}"


class _DeliveryTags:
    """Unique delivery tags, shaped as kombu's (a uuid4 string), for a fraction of uuid4's cost: a random
    prefix per process (74 random bits) and a counter. kombu keys its unacked bookkeeping by the tag: it
    must be unique, nothing more (uuid4 was ~3 us of a ~12 us message here)."""

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)  # a forked child must not repeat the parent's tags

    def _reseed(self) -> None:
        self._prefix = str(uuid.uuid4())[:24]  # "xxxxxxxx-xxxx-4xxx-yxxx-": 98 random bits
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count) & 0xFFFFFFFFFFFF:012x}"


_TAGS = _DeliveryTags()


class TaskMessage(NamedTuple):
    """One task message as ``app.amqp.as_task_v2`` made it, before it is serialised. ``headers``,
    ``properties`` and ``body`` are what ``before_task_publish`` receivers see and may change."""

    name: str
    queue: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    body: tuple[Any, ...]  # (args, kwargs, embed): Celery's protocol 2
    sent_event: dict[str, Any] | None  # the ``task-sent`` event's fields, when the app sends them


class MessageBuilder:
    """Builds raw Redis-transport task messages with a Celery app's own protocol code."""

    def __init__(self, app: Any) -> None:
        self.app = app
        opts = app.conf.broker_transport_options or {}
        self.body_encoding = opts.get("body_encoding", "base64")
        self.global_keyprefix = opts.get("global_keyprefix", "")
        # as_task_v2 calls anon_nodename() (gethostname) per message unless given an origin.
        self.origin = f"gen{os.getpid()}@{socket.gethostname()}"
        self._keys: dict[tuple[str, int], str] = {}  # (queue, priority) -> list key
        self._as_task_v2 = app.amqp.as_task_v2  # app.amqp is a cached property: its lookup, once

    def queue_key(self, queue: str, priority: int) -> str:
        """``redis_queue_key`` under this app's key prefix, remembered per queue and priority."""
        key = self._keys.get((queue, priority))
        if key is None:
            if len(self._keys) > 10_000:  # queues come from routes: a handful, unless something is wrong
                self._keys.clear()
            key = self._keys[(queue, priority)] = redis_queue_key(queue, priority, self.global_keyprefix)
        return key

    def task_message(
        self,
        task: str,
        task_id: str,
        args: list[Any],
        kwargs: dict[str, Any],
        queue: str,
        priority: int = 0,
        *,
        argsrepr: str = "",
        kwargsrepr: str = "",
        ignore_result: bool | None = True,
        expires: float | None = None,
        countdown: float | None = None,
        parent: Any = None,
        sent_event: bool = False,
    ) -> TaskMessage:
        """The message ``send_task`` would build for these options (``parent``: the running task, if any).

        ``ignore_result=None`` leaves it to the task's own ``ignore_result``, as ``send_task`` does."""
        request = parent.request if parent is not None else None
        headers, properties, body, event = self._as_task_v2(
            task_id,
            task,
            args,
            kwargs,
            countdown=countdown,
            expires=expires,
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
            origin=self.origin,
            ignore_result=ignore_result,
            root_id=(request.root_id or request.id) if request is not None else None,
            parent_id=request.id if request is not None else None,
            create_sent_event=sent_event,
        )
        headers.update(tracing.trace_headers())  # tradebus's task span continues the publish's trace
        properties["priority"] = priority
        if expires is not None:  # send_task's message TTL too, in kombu's form (inert on Redis)
            properties["expiration"] = str(int(expires * 1000))
        return TaskMessage(task, queue, headers, properties, body, event)

    def encode(self, message: TaskMessage) -> tuple[str, bytes]:
        """``(redis list key, message bytes)``: what kombu's Redis transport LPUSHes for ``message``."""
        data = orjson.dumps(message.body)  # kombu's "json" serializer: application/json, utf-8
        if self.body_encoding == "base64":
            data = base64.b64encode(data)
        properties = message.properties
        properties["delivery_mode"] = 2  # task_default_delivery_mode 'persistent'
        properties["delivery_info"] = {"exchange": "", "routing_key": message.queue}
        properties["body_encoding"] = self.body_encoding
        properties["delivery_tag"] = _TAGS.next()
        raw = {
            "body": data.decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": message.headers,
            "properties": properties,
        }
        return self.queue_key(message.queue, properties.get("priority") or 0), orjson.dumps(raw)

    def build(
        self,
        task: str,
        task_id: str,
        args: list[Any],
        kwargs: dict[str, Any],
        queue: str,
        priority: int = 0,
        argsrepr: str = "",
        kwargsrepr: str = "",
        **options: Any,
    ) -> tuple[str, bytes]:
        """Return ``(redis list key, message bytes)`` for one task (``options``: see ``task_message``)."""
        return self.encode(
            self.task_message(task, task_id, args, kwargs, queue, priority, argsrepr=argsrepr,
                              kwargsrepr=kwargsrepr, **options)
        )  # fmt: skip


def routed_queue(app: Any, task: str) -> str:
    """The queue ``app``'s router gives ``task`` (its ``task_routes``, else ``task_default_queue``), as
    ``send_task`` would pick it for a call without a queue."""
    options = app.amqp.router.route({}, task, (), {})
    queue = options.get("queue")
    return str(queue.name if queue is not None else options.get("routing_key") or app.conf.task_default_queue)


def redis_client_kwargs(broker_url: str) -> dict[str, Any] | None:
    """redis-py connection arguments for a kombu Redis broker URL; None if it is not Redis.

    Handles ``redis://``, ``rediss://``, ``redis+socket:///path?virtual_host=N`` and ``unix://``.
    """
    parts = urlsplit(broker_url)
    query = dict(parse_qsl(parts.query))
    if parts.scheme in ("redis+socket", "unix", "socket"):
        db = query.get("virtual_host") or query.get("db") or "0"
        return {"unix_socket_path": parts.path, "db": int(db), "password": parts.password,
                "username": parts.username or None}  # fmt: skip
    if parts.scheme not in ("redis", "rediss"):
        return None
    path = parts.path.strip("/")
    kw: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or 6379,
        "db": int(path) if path.isdigit() else int(query.get("virtual_host", 0) or 0),
        "username": parts.username or None,
        "password": parts.password,
    }
    if parts.scheme == "rediss":
        kw["ssl"] = True
    return kw


def same_redis_server(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two connection-argument dicts reach the same server as the same user (the db may differ)."""
    fields = ("host", "port", "unix_socket_path", "username", "password", "ssl")
    return all(a.get(f) == b.get(f) for f in fields)


def broker_sentinel_option(settings: Settings) -> dict[str, str]:
    """kombu's ``master_name`` transport option, which a Sentinel broker (``sentinel://``) needs."""
    master = settings.broker_sentinel_master()
    return {"master_name": master} if master else {}


def broker_key_prefix_option(broker_url: str, settings: Settings) -> dict[str, str]:
    """kombu's ``global_keyprefix`` transport option for a Redis broker with a key prefix set."""
    is_redis = redis_client_kwargs(broker_url) is not None or urlsplit(broker_url).scheme == "sentinel"
    if settings.broker_key_prefix and is_redis:
        return {"global_keyprefix": settings.broker_key_prefix}
    return {}


def publisher_app(broker_url: str, settings: Settings | None = None, queues: Iterable[str] = QUEUES) -> Any:
    """A minimal Celery app for publishing (JSON, bounded retries); the worker app uses more. On
    RabbitMQ it declares ``queues`` as workers do and publishes with confirms (bus.dispatch.amqp)."""
    from celery import Celery

    from bus.config import Settings

    s = settings or Settings()
    app = Celery("tradebus-dispatch", broker=broker_url, set_as_current=False)
    amqp = redis_client_kwargs(broker_url) is None and urlsplit(broker_url).scheme != "sentinel"
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        task_send_sent_event=s.task_send_sent_event,
        # RabbitMQ: queues declared as the worker declares them (other arguments are refused)
        **(amqp_queue_config(queues, s.rabbitmq_quorum_queues, MAX_PRIORITY) if amqp
           else {"task_queue_max_priority": MAX_PRIORITY}),
        broker_connection_timeout=s.redis_connect_timeout,
        broker_transport_options={"priority_steps": list(PRIORITY_STEPS),
                                  "socket_timeout": s.redis_socket_timeout,
                                  "socket_connect_timeout": s.redis_connect_timeout,
                                  "max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                  "interval_max": 0.5, **(CONFIRM_OPTIONS if amqp else {}),
                                  **broker_key_prefix_option(broker_url, s), **broker_sentinel_option(s)},
    )  # fmt: skip
    return app


def bus_connection_kwargs(client: redis.Redis) -> dict[str, Any]:
    """Connection arguments of the bus client, in redis_client_kwargs' vocabulary (for same_redis_server)."""
    pool = client.connection_pool
    kw = pool.connection_kwargs
    ssl = True if issubclass(pool.connection_class, redis.SSLConnection) else None
    return {"host": kw.get("host"), "port": kw.get("port"), "unix_socket_path": kw.get("path"),
            "username": kw.get("username"), "password": kw.get("password"), "ssl": ssl}  # fmt: skip
