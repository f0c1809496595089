"""Wake-ups: what the publish scripts need to wake log routes, and the wake-up task messages.

The publish scripts (publish.lua, publish_many.lua, and publish_sequenced.lua for an executor's outbox;
their shared part is bus/core/wake.lua) take, after their own arguments, the symbol's wake-message hash
and one wake flag key per log route the event wakes, and ``flag TTL, broker db, bus db`` plus ``group,
queue key, message field, message`` per route. The script sets each flag with SET NX PX in the same atomic step as
the XADD; for a flag it set it creates the route's group (at ``$`` before the XADD: a new route sees the
log from its first woken event on) and, when the broker is a database of the bus's Redis (``broker db``
given), LPUSHes the wake-up message with the log id in place of ``ID_PLACEHOLDER``, so the message is
named after the event that woke the route. The message (about 1.4 KB) travels once per process and
symbol: the script stores it in the hash under a field naming its content, and later publishes send only
the field. With a separate broker the script only reports which flags it set and the publisher sends
those wake-ups right after (``Dispatcher.send_wakes``); a send that fails leaves the flag to expire and
beat's wake job to pick the group up.

Wake-ups fire no Celery publish signals (``before_task_publish`` / ``after_task_publish``, task-sent), by
choice: a wake-up is plumbing, not one event's task. Its message is built once per symbol and route and
stored (above), so there is no per-publish message for a receiver to change, and firing the signals per
publish would cost what storing it saves (a message built, announced and sent per event, the very cost log
routes remove). A tracer's ``traceparent`` would name one event while the drain applies a batch of many.
Monitoring still sees every drain where it runs: the worker's task-received / started / succeeded events,
``tradebus top`` and the stats; a route's progress is its group's lag (``tradebus state --lag``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bus.core.keys import Keys
from bus.dispatch.logroutes.config import LogRouteConfig
from bus.dispatch.messages import MessageBuilder
from bus.dispatch.names import DRAIN_TASK
from bus.dispatch.routing import Route

#: every drainer reads as this one consumer: only the lease holder reads, so a dead drainer's pending
#: entries are simply the next drainer's own (read first, in log order)
CONSUMER = "drainer"
#: where the publish script puts the log id in a staged wake-up message (task id and delivery tag)
ID_PLACEHOLDER = "@@ID@@"


@dataclass(frozen=True)
class Wake:
    """The publish-script arguments that wake ``routes`` (log routes) for one symbol."""

    routes: tuple[Route, ...]
    keys: tuple[str, ...]
    args: tuple[Any, ...]


def wake_task_id(route: str, symbol: str, log_id: str) -> str:
    return f"wake:{route}:{symbol}:{log_id}"


class Waker:
    """Builds (and caches, per symbol and route set) the wake arguments of one dispatcher."""

    def __init__(self, messages: MessageBuilder, config: LogRouteConfig) -> None:
        self.messages = messages
        self.config = config
        self.keys = Keys()
        self.select: tuple[int, int] | None = None  # (broker db, bus db) when wake-ups are staged
        # per (symbol, route names): the arguments with the messages, and without them (once sent)
        self._cache: dict[tuple[str, tuple[str, ...]], tuple[Wake, Wake]] = {}
        self._sent: set[tuple[str, tuple[str, ...]]] = set()

    def attach(self, keys: Keys, select: tuple[int, int] | None) -> None:
        self.keys, self.select = keys, select
        self._cache.clear()
        self._sent.clear()

    def wake(self, symbol: str, routes: Sequence[Route]) -> Wake | None:
        if not routes:
            return None
        key = (symbol, tuple(r.name for r in routes))
        variants = self._cache.get(key)
        if variants is None:
            if len(self._cache) > 10_000:
                self._cache.clear()
                self._sent.clear()
            variants = self._cache[key] = self._build(symbol, tuple(routes))
        if key in self._sent:
            return variants[1]
        self._sent.add(key)  # this publish stores the messages; if it fails, the script says so (unsent)
        return variants[0]

    def forget(self, symbol: str) -> None:
        """The script found a message missing (the hash was deleted): send them again with the next publish."""
        self._sent = {k for k in self._sent if k[0] != symbol}

    def _build(self, symbol: str, routes: tuple[Route, ...]) -> tuple[Wake, Wake]:
        broker_db, bus_db = self.select if self.select is not None else ("", "")
        full: list[Any] = [self.config.flag_ttl_ms, broker_db, bus_db]
        lean = list(full)
        for r in routes:
            key, message = self.message(r, symbol, ID_PLACEHOLDER) if self.select is not None else ("", b"")
            field = f"{r.name}:{hashlib.sha1(message).hexdigest()[:12]}"
            full += (r.name, key, field, message)
            lean += (r.name, key, field, "")
        keys = (self.keys.wake_messages(symbol), *(self.keys.wake_flag(r.name, symbol) for r in routes))
        return Wake(routes, keys, tuple(full)), Wake(routes, keys, tuple(lean))

    def message(self, route: Route, symbol: str, log_id: str) -> tuple[str, bytes]:
        """``(queue key, raw message)`` of the wake-up of (route, symbol), named after ``log_id``."""
        task_id = wake_task_id(route.name, symbol, log_id)
        key, raw = self.messages.build(DRAIN_TASK, task_id, [route.name, symbol], {}, route.queue, route.priority,
                                       argsrepr=f"[{route.name!r}, {symbol!r}]", kwargsrepr="{}")  # fmt: skip
        message = orjson.loads(raw)
        # kombu's unacked bookkeeping is keyed by the delivery tag: unique per wake-up, like the task id
        message["properties"]["delivery_tag"] = task_id
        return key, orjson.dumps(message)
