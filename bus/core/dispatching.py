"""What the bus needs of a dispatcher: the routed Celery tasks of an event, enqueued at least once.

``bus.dispatch.dispatcher.Dispatcher`` implements it; the bus only knows this protocol.

* ``RedisEventBus.__init__`` calls ``dispatcher.attach(client, keys)``.
* ``routes = dispatcher.routes_for(event)`` -> the event's routes (each has ``.name``).
* If ``routes`` and ``dispatcher.stages_in_bus_pipeline``: the publisher builds a MULTI pipeline
  ``[SCRIPT LOAD..., (SADD symbols), EVALSHA publish, (inline effects), <dispatcher.stage(pipe, event,
  payload, routes)>]`` and executes it once: log + broadcast + task messages commit together.
  ``stage`` returns the route names it queued (-> ``receipt.dispatched``). The publisher passes a list
  ``after_commit``; once the pipeline has executed with every command applied, it calls what the
  dispatcher appended there (Celery's ``after_task_publish`` and task-sent events).
* Else, if ``routes``: the publish script also ZADDs the log id to ``keys.pending_dispatch_for(symbol)``
  (score: ms), and after it the publisher calls ``dispatcher.send_many(items, log_ids)`` with items
  ``[(event, payload, routes)]`` -> one ``(dispatched, not_dispatched)`` pair of route names per item.
  The dispatcher ZREMs what it enqueued; what stays pending is re-dispatched by beat. A
  ``DispatchError`` from the dispatcher propagates (strict mode); any other error is logged and every
  route is reported in ``not_dispatched`` (the event is logged either way: durable publish).

The asyncio bus (bus.aio) drives the same protocol: ``attach`` gets a blocking client of the bus's
server; ``stage`` gets a redis.asyncio pipeline, so it may only queue commands on it (``execute_command``,
``lpush``...: synchronous on both kinds); ``send_many`` is called in a worker thread
(``asyncio.to_thread``) after the event is logged, so it may block, as it does here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import redis

from bus.core.keys import Keys
from bus.events.model import TradeEvent

#: ``(dispatched, not_dispatched)`` route names of one event
RouteNames = tuple[tuple[str, ...], tuple[str, ...]]


class NamedRoute(Protocol):
    """All the bus reads of a route: its name, reported in the receipt."""

    @property
    def name(self) -> str: ...


R = TypeVar("R", bound=NamedRoute)


class TaskDispatcher(Protocol[R]):
    """Turns a logged event into the tasks its routes name (``R``: the dispatcher's route type)."""

    #: True when task messages can join the bus's own MULTI pipeline (see ``stage``)
    stages_in_bus_pipeline: bool

    def attach(self, client: redis.Redis, keys: Keys) -> object:
        """Bind to the bus's client and key prefix; decides ``stages_in_bus_pipeline``."""
        ...

    def routes_for(self, event: TradeEvent) -> Sequence[R]: ...

    def stage(
        self,
        pipe: Any,
        event: TradeEvent,
        payload: bytes | str,
        routes: Sequence[R],
        after_commit: list[Callable[[], object]] | None = None,
    ) -> tuple[str, ...]:
        """Queue the task messages on ``pipe`` (a MULTI pipeline of the bus client); their route names.
        Callables appended to ``after_commit`` are to be called once ``pipe`` has committed."""
        ...

    def send_many(
        self, items: Sequence[tuple[TradeEvent, bytes | str, Sequence[R]]], log_ids: Sequence[str | None]
    ) -> list[RouteNames]:
        """Enqueue the tasks of several logged events; one ``(dispatched, not_dispatched)`` per item."""
        ...
