"""Celery task messages built by hand, exactly as kombu's Redis transport writes them.

``apply_async`` costs ~350 us of client Python per task and one LPUSH per task. Building the same
message here lets the dispatcher put several task messages (and, when the broker is the bus's Redis
server, the event log write) into ONE pipeline. The steps mirror, in order:

1. ``celery.app.amqp.AMQP.as_task_v2``   -> headers, properties, body (Celery's protocol 2; called as is)
2. ``kombu.Producer.publish``            -> JSON-serialise the body, delivery_mode 2 (persistent)
3. ``virtual.Channel.prepare_message``    -> the message dict, properties.delivery_info, priority
4. ``virtual.Channel._inplace_augment_message`` -> base64 body, body_encoding, delivery_tag (uuid4),
   delivery_info.exchange = '' (Celery's anon exchange for direct queues) and routing_key = queue
5. ``redis.Channel._put`` -> LPUSH to the queue's priority sub-list (``queue\\x06\\x16<step>``)

tests/test_dispatch_messages.py compares the result with what ``send_task`` writes, and runs it on a
real worker. Celery is imported lazily: ``import bus`` stays Celery-free.
"""

from __future__ import annotations

import base64
import os
import socket
import uuid
from bisect import bisect
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from bus.observability import tracing

if TYPE_CHECKING:
    from bus.config import Settings

# kombu.transport.redis.PRIORITY_STEPS and Channel.sep (checked against kombu in the tests).
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"
# Celery publish settings the dispatcher and the worker share (bounded: apply_async must not hang).
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def redis_queue_key(queue: str, priority: int = 0, global_keyprefix: str = "") -> str:
    """The Redis list kombu pushes a message of this priority to (``Channel._q_for_pri``)."""
    step = PRIORITY_STEPS[bisect(PRIORITY_STEPS, max(0, min(priority, 9))) - 1]
    return f"{global_keyprefix}{queue}{PRIORITY_SEP}{step}" if step else f"{global_keyprefix}{queue}"


class MessageBuilder:
    """Builds raw Redis-transport task messages with a Celery app's own protocol code."""

    def __init__(self, app: Any) -> None:
        self.app = app
        opts = app.conf.broker_transport_options or {}
        self.body_encoding = opts.get("body_encoding", "base64")
        self.global_keyprefix = opts.get("global_keyprefix", "")
        # as_task_v2 calls anon_nodename() (gethostname) per message unless given an origin.
        self.origin = f"gen{os.getpid()}@{socket.gethostname()}"

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
    ) -> tuple[str, bytes]:
        """Return ``(redis list key, message bytes)`` for one task."""
        headers, properties, body, _ = self.app.amqp.as_task_v2(
            task_id,
            task,
            args,
            kwargs,
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
            origin=self.origin,
            ignore_result=True,  # no result backend: nothing to store
        )
        headers.update(tracing.trace_headers())  # the task span continues the publish's trace
        data = orjson.dumps(body)  # kombu's "json" serializer: application/json, utf-8
        if self.body_encoding == "base64":
            data = base64.b64encode(data)
        properties["delivery_mode"] = 2  # task_default_delivery_mode 'persistent'
        properties["delivery_info"] = {"exchange": "", "routing_key": queue}
        properties["priority"] = priority
        properties["body_encoding"] = self.body_encoding
        properties["delivery_tag"] = str(uuid.uuid4())
        message = {
            "body": data.decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
        return redis_queue_key(queue, priority, self.global_keyprefix), orjson.dumps(message)


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
