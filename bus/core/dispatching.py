"""What the bus needs of a dispatcher: the routed Celery tasks of an event, enqueued at least once.

``bus.dispatch.dispatcher.Dispatcher`` implements it; the bus only knows this protocol.

* ``RedisEventBus.__init__`` calls ``dispatcher.attach(client, keys)``.
* ``routes = dispatcher.routes_for(event)`` -> the event's routes (each has ``.name``).
* If ``routes`` and ``dispatcher.stages_in_bus_pipeline``: the publisher calls ``dispatcher.stage(recorder,
  event, payload, routes, after_commit)`` with a ``StagedCommands`` recorder (bus/core/scripts.py) and
  passes the recorded commands to the publish script, which runs them right after its XADD: log +
  broadcast + task messages commit in one script call (bus/core/staging.py). ``stage`` returns the route
  names it queued (-> ``receipt.dispatched``); once the script ran them all, the publisher calls what the
  dispatcher appended to ``after_commit`` (Celery's ``after_task_publish`` and task-sent events). A
  command the server refuses leaves the event recorded pending, as below, and its routes not dispatched.
* Else, if ``routes``: the publish script also ZADDs the log id to ``keys.pending_dispatch_for(symbol)``
  (score: ms), and after it the publisher calls ``dispatcher.send_many(items, log_ids)`` with items
  ``[(event, payload, routes)]`` -> one ``(dispatched, not_dispatched)`` pair of route names per item.
  The dispatcher ZREMs what it enqueued; what stays pending is re-dispatched by beat. A
  ``DispatchError`` from the dispatcher propagates (strict mode); any other error is logged and every
  route is reported in ``not_dispatched`` (the event is logged either way: durable publish).

The asyncio bus (bus.aio) drives the same protocol: ``attach`` gets a blocking client of the bus's
server; ``stage`` gets a recorder (or, in a log-route effect's transaction, a pipeline), so it may only
queue commands on it (``execute_command``, ``lpush``); ``send_many`` is called in a worker thread
(``asyncio.to_thread``) after the event is logged, so it may block, as it does here.

A dispatcher with log routes (``LogRouteWaker``) also gives, per event, the wake flags its log routes
need (``wake_for``): they go into the publish script's own call, which sets each with SET NX in the same
atomic step as the XADD and enqueues one wake-up per flag it set (bus/dispatch/logroutes/wake.py). Its
routes are reported in ``receipt.dispatched``: the log itself is their queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

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

    #: True when task messages can ride in the bus's own publish script (see ``stage``)
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
        """Queue the task messages on ``pipe`` (a recorder, or a MULTI of the bus client); their route names.
        Callables appended to ``after_commit`` are to be called once ``pipe`` has committed."""
        ...

    def send_many(
        self, items: Sequence[tuple[TradeEvent, bytes | str, Sequence[R]]], log_ids: Sequence[str | None]
    ) -> list[RouteNames]:
        """Enqueue the tasks of several logged events; one ``(dispatched, not_dispatched)`` per item."""
        ...


class WakeArgs(Protocol):
    """The publish-script arguments that wake an event's log routes: KEYS (the wake flags) and ARGV."""

    @property
    def routes(self) -> Sequence[NamedRoute]: ...

    @property
    def keys(self) -> Sequence[str]: ...

    @property
    def args(self) -> Sequence[Any]: ...


@runtime_checkable
class LogRouteWaker(Protocol):
    """A dispatcher that also wakes log routes (bus.dispatch.dispatcher.Dispatcher)."""

    def wake_for(self, event: TradeEvent) -> WakeArgs | None:
        """The wake arguments of ``event``'s log routes, or None when it has none."""
        ...

    def wake_of(self, symbol: str, routes: Sequence[Any]) -> WakeArgs | None:
        """The wake arguments of a set of log routes (a run of one symbol's events)."""
        ...

    def send_wakes(self, symbol: str, routes: Sequence[Any], log_id: str) -> bool:
        """Send the wake-ups whose flags the script set, when the broker is not the bus's server."""
        ...
