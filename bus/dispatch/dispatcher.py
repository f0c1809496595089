"""Dispatcher: turns a logged event into the Celery tasks its routes name, cheaply and at least once.

The bus's side of it is the ``TaskDispatcher`` protocol (bus/core/dispatching.py); this implements it:

* ``RedisEventBus.__init__`` calls ``dispatcher.attach(bus.client, bus.keys)``.
* ``routes = dispatcher.routes_for(event)`` (cached per type and symbol).
* If ``dispatcher.stages_in_bus_pipeline`` (the broker is a Redis database on the bus's own server):
  ``dispatcher.stage(recorder, event, payload, routes, after_commit)`` records ``SELECT <broker db>;
  LPUSH ...; SELECT <bus db>``, which the publish script runs right after its XADD (bus/core/staging.py),
  so log + broadcast + task messages commit in one script call and nothing needs recording.
* Otherwise the publish script also ZADDs ``log_id`` to ``keys.pending_dispatch_for(symbol)`` (score:
  server time in ms), and after EXEC the bus calls ``dispatcher.send_many(items, log_ids)``: one
  pipeline (Redis broker) or one producer session (AMQP) for all routes, then ZREM of the pending
  entries. If the broker refuses, ``send_many`` returns the routes as not dispatched (or raises
  DispatchError when strict) and the pending entries stay for ``redispatch_missed`` (beat) to pick up.

Task call convention: ``send_task(route.task, args=[event_json], kwargs={"route": route.name},
task_id=f"{event_id}:{route.name}", queue=route.queue, priority=route.priority)`` plus the route's
``ignore_result`` / ``expires`` / ``countdown``; a route without a queue is placed by the app's router.
Messages it builds itself fire Celery's publish signals and task-sent events (bus/dispatch/signals.py);
with ``task_always_eager`` the tasks run inline, in the publishing thread, once the event is logged.

Log routes (``mode="log"``) get no message per event: ``routes_for`` leaves them out and ``wake_for``
gives the publish script their wake flags (bus/dispatch/logroutes/wake.py); with a separate broker the
publisher calls ``send_wakes`` for the flags the script set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster

from bus.config import Settings, safe_url
from bus.core.connection import NO_RETRIES, make_client
from bus.core.dispatching import RouteNames
from bus.core.keys import Keys
from bus.core.wire import text
from bus.dispatch import redispatch
from bus.dispatch.logroutes.config import LogRouteConfig
from bus.dispatch.logroutes.wake import Wake, Waker, wake_task_id
from bus.dispatch.messages import (
    PUBLISH_RETRY_POLICY,
    MessageBuilder,
    bus_connection_kwargs,
    publisher_app,
    redis_client_kwargs,
    routed_queue,
    same_redis_server,
)
from bus.dispatch.names import DRAIN_TASK
from bus.dispatch.routing import LOG, Route, RoutingTable
from bus.dispatch.signals import Announced, PublishSignals
from bus.errors import DispatchError
from bus.events.model import TradeEvent
from bus.events.registry import load_event_types

log = logging.getLogger(__name__)

# After a failed send, publishes skip the broker for this long (beat re-dispatches them), so an
# outage costs one connect timeout per second, not one per publish.
BROKER_BACKOFF_SECONDS = 1.0

Item = tuple[TradeEvent, "bytes | str", Sequence[Route]]


def task_id(event_id: str, route: Route) -> str:
    return f"{event_id}:{route.name}"


class Dispatcher:
    def __init__(
        self,
        broker_url: str,
        routing: RoutingTable | None = None,
        *,
        settings: Settings | None = None,
        app: Any = None,
        strict: bool = False,
        log_routes: LogRouteConfig | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.routing = routing if routing is not None else RoutingTable.default()
        self.settings = settings or Settings()
        #: raise DispatchError when the broker refuses a publish's tasks (else report them not dispatched)
        self.strict = strict
        self.app = app if app is not None else publisher_app(broker_url, self.settings, self.routing.queues)
        self.messages = MessageBuilder(self.app)
        self.signals = PublishSignals(self.app)
        #: ``task_always_eager``: routed tasks run inline once the event is logged (a test mode)
        self.eager = bool(self.app.conf.task_always_eager)
        if self.eager:
            self.app.loader.import_default_modules()  # the app's include (TRADEBUS_TASK_MODULES), as a worker
        self._router_queues: dict[str, str] = {}  # task -> queue, for routes that name none
        self.waker = Waker(self.messages, log_routes or LogRouteConfig.from_settings(self.settings.log_routes))
        self._split: dict[tuple[str, str], tuple[tuple[Route, ...], Wake | None]] = {}
        self._redis_kw = redis_client_kwargs(broker_url)
        self._broker: redis.Redis | None = None
        self._down_until = 0.0
        self.client: redis.Redis | None = None  # the bus's Redis (attach)
        self.keys: Keys | None = None
        self.stages_in_bus_pipeline = False
        self._select: tuple[int, int] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, routing: RoutingTable | None = None, **kw: Any) -> Dispatcher:
        """The dispatcher for ``settings``: TRADEBUS_ROUTES_FILE's table (the one workers read) unless
        ``routing`` is given; ``app=`` a Celery app to publish with its configuration."""
        load_event_types(settings.event_types_module)  # routes may name custom types
        workers = RoutingTable.from_file(settings.routes_file) if settings.routes_file else RoutingTable.default()
        if routing is not None and routing.routes != workers.routes:
            unknown = sorted(r.name for r in routing if r != workers.get(r.name))
            log.warning("route(s) %s differ from the table workers read (TRADEBUS_ROUTES_FILE=%s): write it with "
                        "RoutingTable.to_file() and point TRADEBUS_ROUTES_FILE at it", unknown,
                        settings.routes_file or "unset")  # fmt: skip
        kw.setdefault("strict", settings.dispatch_strict)
        return cls(settings.broker_url, routing if routing is not None else workers, settings=settings, **kw)

    def __repr__(self) -> str:
        return f"Dispatcher({safe_url(self.broker_url)!r}, routes={[r.name for r in self.routing]})"

    # --- wiring -----------------------------------------------------------------------------------

    def attach(self, client: redis.Redis, keys: Keys) -> Dispatcher:
        """Bind to the bus's client; decides whether task messages can join the bus's transaction."""
        self.client, self.keys = client, keys
        if isinstance(client, RedisCluster):  # refuses SELECT: task messages take the pending-record path
            self.stages_in_bus_pipeline, self._select = False, None
            return self
        bus_kw = client.connection_pool.connection_kwargs
        same = self._redis_kw is not None and same_redis_server(bus_connection_kwargs(client), self._redis_kw)
        # SELECT is refused by Redis Cluster; a cluster client has no connection_pool.connection_kwargs db.
        self.stages_in_bus_pipeline = bool(same) and isinstance(bus_kw.get("db", 0), int) and not self.eager
        if self.stages_in_bus_pipeline:
            self._select = (int(self._redis_kw["db"]), int(bus_kw.get("db", 0)))  # type: ignore[index]
        self.waker.attach(keys, self._select)
        self._split.clear()
        return self

    def routes_for(self, event: TradeEvent) -> tuple[Route, ...]:
        """The event routes of ``event``: one task message each."""
        return self._routes_and_wake(event)[0]

    def wake_for(self, event: TradeEvent) -> Wake | None:
        """The publish-script arguments that wake the log routes of ``event``, if any."""
        return self._routes_and_wake(event)[1]

    def wake_of(self, symbol: str, routes: Sequence[Route]) -> Wake | None:
        """The same for a set of log routes (a run of events of one symbol)."""
        return self.waker.wake(symbol, routes)

    def _routes_and_wake(self, event: TradeEvent) -> tuple[tuple[Route, ...], Wake | None]:
        key = (event.event_type.value, event.symbol)
        hit = self._split.get(key)
        if hit is None:
            routes = self.routing.routes_for(key)
            logged = [r for r in routes if r.mode == LOG]
            hit = (tuple(r for r in routes if r.mode != LOG), self.waker.wake(event.symbol, logged))
            if len(self._split) > 10_000:
                self._split.clear()
            self._split[key] = hit
        return hit

    def queue_of(self, route: Route) -> str:
        """The route's queue, or the one the app's router gives its task (asked once per task)."""
        if route.queue:
            return route.queue
        queue = self._router_queues.get(route.task)
        if queue is None:
            queue = self._router_queues[route.task] = routed_queue(self.app, route.task)
        return queue

    def _messages(
        self, event_id: str, event_json: str, routes: Iterable[Route], announced: list[Announced] | None = None
    ) -> list[tuple[str, bytes]]:
        """Each route's message; with ``announced`` (signals active), ``before_task_publish`` fired first."""
        task_message, encode = self.messages.task_message, self.messages.encode
        parent = self.app.current_worker_task  # a task publishing: its id becomes the parent id, as in send_task
        sent_event = self.signals.sent_events
        out = []
        for r in routes:
            m = task_message(r.task, task_id(event_id, r), [event_json], {"route": r.name}, self.queue_of(r),
                             r.priority, argsrepr=f"[<event {event_id}>]", kwargsrepr=f"{{'route': '{r.name}'}}",
                             ignore_result=r.ignore_result, expires=r.expires, countdown=r.countdown,
                             parent=parent, sent_event=sent_event)  # fmt: skip
            if announced is not None:
                announced.append(self.signals.before(m))
            out.append(encode(m))
        return out

    # --- same-server path: inside the bus's publish script --------------------------------------------------

    def stage(
        self,
        pipe: Any,
        event: TradeEvent,
        payload: bytes | str,
        routes: Sequence[Route],
        after_commit: list[Callable[[], object]] | None = None,
    ) -> tuple[str, ...]:
        """Queue the task messages on ``pipe`` (the publisher's StagedCommands recorder, or a MULTI of the
        bus client); ``before_task_publish`` fires now, and ``after_task_publish`` / task-sent from the
        callable appended to ``after_commit``."""
        if not routes:
            return ()
        if self._select is None:
            raise DispatchError("stage() needs a broker on the bus's Redis server (see attach())")
        broker_db, bus_db = self._select
        announced: list[Announced] | None = [] if self.signals.active else None
        msgs = self._messages(event.event_id, text(payload), routes, announced)
        if announced and after_commit is not None:
            after_commit.append(lambda: self.signals.after(announced))
        if broker_db != bus_db:
            pipe.execute_command("SELECT", broker_db)
        for key, raw in msgs:
            pipe.lpush(key, raw)
        if broker_db != bus_db:
            pipe.execute_command("SELECT", bus_db)
        return tuple(r.name for r in routes)

    # --- separate broker ----------------------------------------------------------------------------

    def send(
        self,
        event: TradeEvent,
        payload: bytes | str,
        routes: Sequence[Route],
        log_id: str | None = None,
        *,
        strict: bool | None = None,
    ) -> RouteNames:
        """Enqueue ``routes`` for one event; returns ``(dispatched, not_dispatched)`` route names."""
        return self.send_many([(event, payload, routes)], [log_id], strict=strict)[0]

    def send_many(
        self, items: Sequence[Item], log_ids: Sequence[str | None] | None = None, *, strict: bool | None = None
    ) -> list[RouteNames]:
        """Enqueue several events' tasks in one broker round trip; ZREM their pending entries.

        ``strict`` (default: the dispatcher's own) raises DispatchError when the broker refuses."""
        names = [tuple(r.name for r in routes) for _, _, routes in items]
        if not any(names):
            self._forget_pending(items, log_ids)
            return [((), ()) for _ in items]
        error: Exception | None = None
        if time.monotonic() < self._down_until:
            error = DispatchError(f"broker {safe_url(self.broker_url)} was unreachable moments ago")
        else:
            try:
                self._publish(items)
            except Exception as e:  # noqa: BLE001 - any broker failure leaves the event pending
                error = e
                self._down_until = time.monotonic() + BROKER_BACKOFF_SECONDS
        if error is not None:
            log.warning("dispatch to %s failed (%s); %d event(s) left pending for re-dispatch",
                        safe_url(self.broker_url), type(error).__name__, len(items))  # fmt: skip
            if self.strict if strict is None else strict:
                raise DispatchError(f"could not enqueue tasks on {safe_url(self.broker_url)}: {error}") from error
            return [((), n) for n in names]
        self._forget_pending(items, log_ids)
        return [(n, ()) for n in names]

    def _publish(self, items: Sequence[Item]) -> None:
        if self.eager:
            return self._run_eagerly(items)
        if self._redis_kw is not None:
            announced: list[Announced] | None = [] if self.signals.active else None
            with self._broker_client().pipeline(transaction=False) as pipe:
                for event, payload, routes in items:
                    for key, raw in self._messages(event.event_id, text(payload), routes, announced):
                        pipe.lpush(key, raw)
                pipe.execute()
            if announced:
                self.signals.after(announced)
            return None
        # AMQP (or any non-Redis transport): Celery's own publisher (its signals too), bounded retries, one session.
        with self.app.producer_or_acquire() as producer:
            for event, payload, routes in items:
                for r in routes:
                    self.app.send_task(
                        r.task, args=[text(payload)], kwargs={"route": r.name},
                        task_id=task_id(event.event_id, r), queue=r.queue or None, priority=r.priority,
                        ignore_result=r.ignore_result, expires=r.expires, countdown=r.countdown,
                        producer=producer, retry=True, retry_policy=PUBLISH_RETRY_POLICY,
                        argsrepr=f"[<event {event.event_id}>]", kwargsrepr=f"{{'route': '{r.name}'}}",
                    )  # fmt: skip
        return None

    def _run_eagerly(self, items: Sequence[Item]) -> None:
        """``task_always_eager``: each routed task runs here with Celery's ``apply`` (retries included)."""
        for event, payload, routes in items:
            for r in routes:
                task = self.app.tasks.get(r.task)
                if task is None:
                    raise DispatchError(f"route {r.name!r}: task {r.task!r} is not registered in this app (eager)")
                task.apply(args=[text(payload)], kwargs={"route": r.name}, task_id=task_id(event.event_id, r),
                           ignore_result=r.ignore_result)  # fmt: skip

    def send_wakes(self, symbol: str, routes: Sequence[Route], log_id: str) -> bool:
        """Send the wake-ups of ``routes`` (flags the publish script set and did not enqueue itself). False
        if the broker refused: the flags expire and beat's wake job covers the groups meanwhile."""
        if self.stages_in_bus_pipeline:  # the script found no stored message: store them again next time
            self.waker.forget(symbol)
        if self.eager:  # ``task_always_eager``: the drain runs here, as routed tasks do
            for r in routes:
                self.app.tasks[DRAIN_TASK].apply(args=[r.name, symbol], task_id=wake_task_id(r.name, symbol, log_id))
            return True
        try:
            if self._redis_kw is not None:
                with self._broker_client().pipeline(transaction=False) as pipe:
                    for r in routes:
                        pipe.lpush(*self.waker.message(r, symbol, log_id))
                    pipe.execute()
                return True
            with self.app.producer_or_acquire() as producer:
                for r in routes:
                    self.app.send_task(DRAIN_TASK, args=[r.name, symbol], task_id=wake_task_id(r.name, symbol, log_id),
                                       queue=r.queue, priority=r.priority, producer=producer, retry=True,
                                       retry_policy=PUBLISH_RETRY_POLICY)  # fmt: skip
            return True
        except Exception as e:  # noqa: BLE001 - any broker failure: the flag expires, beat wakes the group
            log.warning("wake-up of %s for %s not sent (%s): beat's wake job will pick it up",
                        [r.name for r in routes], symbol, type(e).__name__)  # fmt: skip
            return False

    def _broker_client(self) -> redis.Redis:
        if self._broker is None:
            # fail fast: a publish must not wait out retries; beat re-dispatches what failed
            self._broker = make_client(self.broker_url, self.settings, retries=NO_RETRIES, connection=self._redis_kw)
        return self._broker

    def _forget_pending(self, items: Sequence[Item], log_ids: Sequence[str | None] | None) -> None:
        if log_ids and self.client is not None and self.keys is not None:
            redispatch.forget_pending(self.client, self.keys, items, log_ids)

    # --- recovery (beat, CLI): bus/dispatch/redispatch.py ------------------------------------------

    def redispatch_missed(self, grace_seconds: float = 30.0) -> int:
        """Re-dispatch logged events whose dispatch is not recorded after ``grace_seconds``.

        Returns the number of events enqueued. Raises DispatchError if the broker is still down.
        """
        return redispatch.missed(self, grace_seconds)

    def redispatch_range(self, symbol: str, start: str = "-", end: str = "+", count: int | None = None) -> int:
        """Re-dispatch every logged event of ``symbol`` between two log ids (CLI replay)."""
        return redispatch.log_range(self, symbol, start, end, count)

    def retry_broker_now(self) -> None:
        """A re-dispatch tries the broker even right after a failed publish (no back-off)."""
        self._down_until = 0.0

    def bus(self) -> tuple[redis.Redis, Keys]:
        """The bus's client and keys: the attached ones, else built from the settings (beat, CLI)."""
        if self.client is None or self.keys is None:
            s = self.settings
            self.attach(make_client(s.bus_url, s), Keys(s.key_prefix))
        return self.client, self.keys  # type: ignore[return-value]

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
            self._broker = None
