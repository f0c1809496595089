"""The base task: decode the event, cap redeliveries, retry by the route's policy, dead-letter.

Every routed task is called as ``task(event_json, route=name)`` with id ``{event_id}:{route}``. Tasks
are thin: ``@routed_task(name="tradebus.x.y")`` on ``def fn(self, event_json, route=...)``; inside,
``self.event`` is the decoded TradeEvent and ``self.ctx`` the per-process resources (client, keys).

An exception whose ``retryable`` attribute is False (and any EventValidationError) is not retried.
Counters in ``keys.stats()``: ``run:<task>``, ``retried:<task>``, ``dead_lettered:<task>``.
"""

from __future__ import annotations

import logging
import random
import re
import time
from datetime import datetime
from time import perf_counter
from typing import Any

import redis
from celery import Task, shared_task
from celery.exceptions import Ignore, Reject, Retry

from bus.dispatch.deadletters import dead_letter
from bus.dispatch.routing import RetryPolicy
from bus.errors import EventValidationError, SchemaVersionError
from bus.events.model import TradeEvent
from bus.monitor.snapshot import route_done_field, route_latency_field
from bus.observability import metrics, tracing
from bus.observability.logs import event_fields
from celery_app.context import task_context

log = logging.getLogger(__name__)
# Jitter from a generator of our own: the global one belongs to the application (which may seed it).
_JITTER = random.Random()
#: what RabbitMQ's delay queues put before a routing key (kombu.transport.native_delayed_delivery: 28 bits)
DELAYED_PREFIX = re.compile(r"^(?:[01]\.){28}")
# Seconds a redelivery counter lives: longer than any visibility timeout after which Redis redelivers.
DELIVERY_COUNTER_TTL = 24 * 3600


class TradebusTask(Task):
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    # Policy when the route is unknown (e.g. a task sent by hand).
    default_retry = RetryPolicy()

    @property
    def ctx(self) -> Any:
        return task_context(self.app)

    @property
    def event(self) -> TradeEvent:
        return self.request.tradebus_event  # type: ignore[no-any-return]

    def count(self, what: str, pipe: Any = None) -> None:
        """HINCRBY stats ``<what>:<task>`` (on ``pipe`` if given, to share its round trip)."""
        (pipe if pipe is not None else self.ctx.client).hincrby(self.ctx.keys.stats(), f"{what}:{self.name}", 1)

    def count_run(self, route: str | None, done: int = 0, latency_ms: int = 0) -> None:
        """HINCRBY stats ``run:<task>`` and, for ``done`` events of ``route``, their publish-to-done
        milliseconds and count (what `tradebus top` and the demo summary show per route): one round trip."""
        stats = self.ctx.keys.stats()
        pipe = self.ctx.client.pipeline(transaction=False)
        pipe.hincrby(stats, f"run:{self.name}", 1)
        if route and done:
            pipe.hincrby(stats, route_latency_field(route), latency_ms)
            pipe.hincrby(stats, route_done_field(route), done)
        try:
            pipe.execute()
        except redis.RedisError as e:
            # Statistics only, counted after the work is done: a Redis outage (a failover) must not turn a
            # task that ran into a failed one, nor retry its effect for a counter.
            log.warning("task statistics not counted (%s: %s)", type(e).__name__, e)

    def observe(self, outcome: str, route: str | None) -> None:
        """Prometheus: the attempt's ``outcome`` (run, retried, dead_lettered) and seconds, when metrics are on."""
        recorder = metrics.RECORDER
        if recorder is not None:
            queue = (self.request.delivery_info or {}).get("routing_key") or ""
            started = getattr(self.request, "tradebus_started", None) or perf_counter()
            recorder.record_task(outcome, route or "", queue, perf_counter() - started)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tracer = tracing.active_tracer()
        if tracer is None:
            return self._attempt(args, kwargs)
        headers = {h: getattr(self.request, h, None) for h in tracing.TRACE_HEADERS}
        with tracing.task_span(tracer, self.name, kwargs.get("route"), headers):
            return self._attempt(args, kwargs)

    def _attempt(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        req = self.request
        req.tradebus_started = perf_counter()
        route = kwargs.get("route")
        raw = args[0] if args else kwargs.get("event_json")
        try:
            if not isinstance(raw, str | bytes) or (route is not None and not isinstance(route, str)):
                raise EventValidationError(f"expected (event_json: str, route=str), got args={args!r:.200}")
            req.tradebus_event = TradeEvent.from_json(raw)
        except SchemaVersionError as e:  # a producer on another major version: not a broken message
            return self._dead_letter(raw, route, 1, f"unsupported schema version: {e}")
        except (EventValidationError, ValueError, TypeError) as e:
            return self._dead_letter(raw, route, 1, f"malformed task payload: {e}")
        if (req.delivery_info or {}).get("redelivered") and self._over_redelivery_cap():
            reason = f"redelivered more than {self.ctx.redelivery_cap} times (worker lost each time)"
            return self._dead_letter(raw, route, req.retries + 1, reason)
        try:
            result = self.run(*args, **kwargs)
        except (Retry, Ignore, Reject):
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is retried or dead-lettered
            return self._on_failure(exc, raw, route)
        if not getattr(req, "tradebus_counted", False):
            waited = _since(req.tradebus_event.timestamp)  # the event's time: its publish, give or take the clocks
            self.count_run(route, 1, int(waited * 1000))
            if route and metrics.RECORDER is not None:
                metrics.RECORDER.record_latency(route, (waited,))
        self.observe("run", route)
        return result

    def _over_redelivery_cap(self) -> bool:
        client, key = self.ctx.client, self.ctx.keys.deliveries(f"{self.request.id}:{self.request.retries}")
        pipe = client.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, DELIVERY_COUNTER_TTL)
        redeliveries = pipe.execute()[0]
        log.warning("task %s[%s] redelivered (%d)", self.name, self.request.id, redeliveries,
                    extra=event_fields(self.event, self.request.kwargs.get("route")))  # fmt: skip
        return int(redeliveries) > self.ctx.redelivery_cap

    def retry_queue(self, route: str | None) -> str | None:
        """The queue a retry goes back to: the route's, else the one this delivery came from. Named
        explicitly because Celery (5.5-5.7) routes a countdown retry on quorum queues by the *default*
        queue's routing key when none is named (native delayed delivery: the retry lands on
        task_default_queue); the routing key of a delivery through the delay queues carries their
        prefix (``0.1.0...``), stripped here."""
        r = self.ctx.routing.get(route) if route else None
        if r is not None and r.queue:
            return r.queue
        key = (self.request.delivery_info or {}).get("routing_key")
        return DELAYED_PREFIX.sub("", key) if key else None

    def retry_policy(self, route: str | None) -> RetryPolicy:
        r = self.ctx.routing.get(route) if route else None
        return r.retry if r is not None else self.default_retry

    def _on_failure(self, exc: Exception, raw: Any, route: str | None) -> Any:
        req = self.request
        policy = self.retry_policy(route)
        retryable = getattr(exc, "retryable", True) is not False and not isinstance(exc, EventValidationError)
        if retryable and req.retries < policy.max_retries:
            countdown = min(policy.countdown(req.retries, _JITTER.random()), self.ctx.max_countdown)
            try:
                self.count("retried")
                self.observe("retried", route)
                raise self.retry(exc=exc, countdown=countdown, max_retries=policy.max_retries,
                                 queue=self.retry_queue(route))  # fmt: skip
            except Retry:
                raise
            except Exception as e:  # noqa: BLE001 - the retry could not be enqueued: keep the evidence
                return self._dead_letter(
                    raw, route, req.retries + 1, f"{_reason(exc)}; retry not enqueued: {_reason(e)}"
                )
        why = _reason(exc) if retryable else f"not retryable: {_reason(exc)}"
        return self._dead_letter(raw, route, req.retries + 1, why)

    def _dead_letter(self, raw: Any, route: str | None, attempts: int, reason: str) -> dict[str, Any]:
        event_json = raw if isinstance(raw, str | bytes) else repr(raw)
        client = self.ctx.client
        pipe = client.pipeline(transaction=False)
        queue = (self.request.delivery_info or {}).get("routing_key") or ""
        dead_letter(pipe, self.ctx.keys, event_json=event_json, route=route or "", task=self.name,
                    attempts=attempts, reason=reason, task_id=self.request.id or "", queue=queue)  # fmt: skip
        self.count("dead_lettered", pipe)
        pipe.execute()
        self.observe("dead_lettered", route)
        log.error("task %s[%s] dead-lettered after %d attempt(s): %s", self.name, self.request.id, attempts, reason,
                  extra=event_fields(getattr(self.request, "tradebus_event", None), route))  # fmt: skip
        return {"dead_lettered": True, "reason": reason, "attempts": attempts}


def _since(timestamp: str) -> float:
    """Seconds from an event's ISO-8601 timestamp to now (0 when it is in the future or unreadable)."""
    try:
        return max(0.0, time.time() - datetime.fromisoformat(timestamp).timestamp())
    except ValueError:
        return 0.0


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


def routed_task(*args: Any, **options: Any) -> Any:
    """Declare a task that routes call, with its route's retry policy and dead letters.

    Use it as Celery's ``shared_task``: ``@routed_task`` or ``@routed_task(name="myapp.fills.record",
    **task options)`` on ``def fn(self, event_json: str, route: str = "") -> ...``. The task is bound, on
    TradebusTask (or a subclass given as ``base``) and registered on every Celery app: ``self.event`` is
    the decoded TradeEvent, ``self.ctx`` the worker's Redis client, keys and routing; an exception is
    retried with the backoff of the route named in the call, then dead-lettered (``tradebus deadletters``);
    one whose ``retryable`` attribute is False is dead-lettered at once.
    """
    base = options.setdefault("base", TradebusTask)
    if not (isinstance(base, type) and issubclass(base, TradebusTask)):
        raise TypeError(f"routed_task(base=...) must be a TradebusTask subclass, not {base!r}")
    options.setdefault("bind", True)
    return shared_task(*args, **options)
