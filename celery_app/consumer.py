"""The worker's consumer: a message it cannot run is dead-lettered and acked, and the worker goes on.

Celery's consumer survives some bad messages but only logs them (``on_unknown_message``,
``on_unknown_task``, ``on_invalid_task`` — a pickle body —, ``on_decode_error``), and anything else raised
while it takes a message in (a header of the wrong type, say) ends the worker's main process. Here each of
those paths, and a catch-all around the task handler, writes a dead letter (bus.dispatch.deadletters) with
the message as received, its queue and the reason; Celery's own handling (log line, signal, reject) still
runs. Queue entries the transport cannot even parse come from celery_app.transport (``on_refused_message``).

Arguments are checked against the task's signature before the message goes to the pool: a body of the wrong
shape or wrong arguments would otherwise fail in a pool process outside the task, and be acked with a log
line only (or, for a TradebusTask, retried as if the failure were transient).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.utils.json import dumps
from vine import promise

from bus.dispatch.deadletters import dead_letter

from .context import task_context

log = logging.getLogger(__name__)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    def create_task_handler(self, promise: Any = promise) -> Callable[[Any], Any]:
        transport = self.connection.transport
        if hasattr(transport, "on_refused_message"):  # celery_app.transport (a Redis broker)
            transport.on_refused_message = self._dead_letter_entry
        handle = super().create_task_handler(promise)
        connection_errors = self.connection_errors

        def on_task_received(message: Any) -> Any:
            try:
                problem = call_problem(self.app, message)
                if problem is None:
                    return handle(message)
                self._refuse(message, problem)
            except connection_errors:
                raise  # the consumer reconnects; the message stays unacked and comes back
            except Exception as exc:  # noqa: BLE001 - no message may stop the worker
                log.exception("could not take a message in")
                if not message.acknowledged:
                    self._refuse(message, f"the worker could not take it in: {type(exc).__name__}: {exc}")
            return None

        return on_task_received

    def on_unknown_message(self, body: Any, message: Any) -> None:
        reason = "not a task message (no task name)"
        self._refused(message, reason, super().on_unknown_message, body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        reason = f"unregistered task {str(exc)[:200]}"  # exc: KeyError(name)
        self._refused(message, reason, super().on_unknown_task, body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        reason = f"invalid task message: {type(exc).__name__}: {exc}"
        self._refused(message, reason, super().on_invalid_task, body, message, exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        reason = f"body does not decode: {type(exc).__name__}: {exc}"
        self._refused(message, reason, super().on_decode_error, message, exc)

    def _refused(self, message: Any, reason: str, celery_handler: Callable[..., None], *args: Any) -> None:
        """Dead-letter, then let Celery log, signal and reject as it does; the message ends acked either way."""
        self._dead_letter(message, reason)
        try:
            celery_handler(*args)
        except self.connection_errors:
            raise
        except Exception:  # noqa: BLE001 - e.g. on_unknown_task on a message without an id
            log.exception("Celery's handling of a refused message failed")
        if not message.acknowledged:
            message.ack_log_error(log, self.connection_errors)

    def _refuse(self, message: Any, reason: str) -> None:
        self._dead_letter(message, reason)
        message.ack_log_error(log, self.connection_errors)

    def _dead_letter(self, message: Any, reason: str) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        queue = getattr(message.channel, "delivering_queue", None) or (message.delivery_info or {}).get("routing_key")
        raw = message._raw if hasattr(message, "_raw") else message.body  # the Redis envelope, or an AMQP body
        write_dead_letter(self.app, raw if isinstance(raw, bytes) else dumps(raw).encode(), queue=str(queue or ""),
                          reason=reason, task=str(headers.get("task") or "")[:200],
                          task_id=str(headers.get("id") or "")[:200])  # fmt: skip

    def _dead_letter_entry(self, raw: bytes, queue: str, reason: str) -> None:
        write_dead_letter(self.app, raw, queue=queue, reason=reason)


# Fields of a task message (headers; the body in protocol 1) Celery's worker uses without checking their
# type; a wrong one fails after the pool's slot is taken, and that slot would stay taken for good.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "retries": (int,),
    "timelimit": (list, tuple, type(None)),
    "shadow": (str, type(None)),
    "root_id": (str, type(None)),
    "parent_id": (str, type(None)),
    "group": (str, type(None)),
    "ignore_result": (bool, type(None)),
}


def call_problem(app: Any, message: Any) -> str | None:
    """Why the message's task cannot be called as the message says, or None — also when Celery's own
    checks will refuse it (not a task message, unknown task, disallowed content type)."""
    if not isinstance(message.headers, dict):
        return None
    try:
        body = message.payload  # decoded once: Celery's strategy reads the same cached value
    except (ContentDisallowed, DecodeError):
        return None
    fields = message.headers
    name = fields.get("task")
    if name is None:  # protocol 1: the name, fields and arguments are in the body
        if not isinstance(body, dict) or "task" not in body:
            return None
        fields = body
        name, args, kwargs = body["task"], body.get("args", ()), body.get("kwargs", {})
    elif isinstance(body, dict):  # protocol 2 headers with a protocol 1 body (Celery accepts both)
        args, kwargs = body.get("args", ()), body.get("kwargs", {})
    elif isinstance(body, list | tuple) and len(body) == 3 and isinstance(body[2], dict | None):
        args, kwargs = body[0], body[1]
    else:
        return f"body is not [args, kwargs, embed]: {body!r:.200}"
    if not isinstance(name, str):
        return f"task name is not a string: {name!r:.200}"
    task = app.tasks.get(name)
    if task is None:
        return None
    return fields_problem(fields) or arguments_problem(task, args, kwargs)


def fields_problem(fields: dict[str, Any]) -> str | None:
    if "id" not in fields:
        return "no task id"
    for key, types in FIELD_TYPES.items():
        if key in fields and not isinstance(fields[key], types):
            return f"{key} is a {type(fields[key]).__name__}: {fields[key]!r:.100}"
    limits = fields.get("timelimit")
    if limits is not None and (len(limits) != 2 or not all(_seconds(v) for v in limits)):
        return f"timelimit is not [hard, soft] seconds: {limits!r:.100}"
    return None


def _seconds(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0)


def arguments_problem(task: Any, args: Any, kwargs: Any) -> str | None:
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return f"args must be a list and kwargs an object, got {type(args).__name__} / {type(kwargs).__name__}"
    check_arguments = getattr(task, "__header__", None)  # Celery's own signature stub (apply_async uses it)
    if check_arguments is not None:
        try:
            check_arguments(*args, **kwargs)
        except TypeError as e:
            return f"arguments do not match {task.name}: {e}"
    return None


def write_dead_letter(app: Any, raw: bytes, *, queue: str, reason: str, task: str = "", task_id: str = "") -> None:
    """One dead letter for a refused message, counted as ``refused:<queue>``; logged if Redis is away."""
    log.error("refused a message on %s: %s", queue, reason)
    ctx = task_context(app)
    try:
        pipe = ctx.client.pipeline(transaction=False)
        dead_letter(pipe, ctx.keys, event_json=raw, route="", task=task, attempts=0, reason=reason,
                    task_id=task_id, queue=queue)  # fmt: skip
        pipe.hincrby(ctx.keys.stats(), f"refused:{queue}", 1)
        pipe.execute()
    except redis.RedisError:
        log.exception("could not dead-letter the refused message from %s: %r", queue, raw[:2048])
