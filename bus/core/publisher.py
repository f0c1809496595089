"""Publishing: one atomic round trip per event (or per batch), with inline effects and task dispatch.

``publish.lua`` appends the event to its symbol's log (``MAXLEN ~``), records the heads, broadcasts it
and runs its staged task messages (a broker on the bus's server), atomically; ``publish_many.lua`` does
the same for a run of consecutive same-symbol events in one call. The script arguments are built in
bus/core/staging.py. Inline effects (the state projection of ``RedisEventBus(apply_state=True)``) follow
each script call in the same pipeline; a separate broker gets the tasks after it (bus/core/dispatching.py).

Everything here is written as steps (bus/core/steps.py): preparing the script arguments, choosing
the scripts, staging the pipeline and reading its replies happen once, for both buses. ``publish`` /
``publish_many`` run them on the blocking client; ``bus.aio`` runs ``publish_steps`` /
``publish_many_steps`` on a redis.asyncio client (then ``client`` is that one, and the dispatcher's
``send_many`` runs in a worker thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from time import perf_counter
from typing import Any, NamedTuple, Protocol

import redis
from redis.cluster import RedisCluster

from bus.core.connection import SLOT_MOVED, HeldConnection, refresh_slots, slot_client
from bus.core.dispatching import RouteNames, TaskDispatcher, WakeArgs
from bus.core.durability import Durability
from bus.core.keys import Keys
from bus.core.scripts import LuaScript, pipeline_steps
from bus.core.staging import PUBLISH, PUBLISH_MANY, PublishReceipt, Staged, Stager
from bus.core.steps import Blocking, Command, Steps, run
from bus.errors import DispatchError
from bus.events.model import TradeEvent
from bus.observability import metrics, tracing

log = logging.getLogger(__name__)

__all__ = ["PUBLISH", "PUBLISH_MANY", "InlineEffect", "PublishReceipt", "Publisher"]

#: most events one publish_many.lua call takes (bounds how long one script holds the server)
PUBLISH_RUN_MAX = 100
NOT_ROUTED: RouteNames = ((), ())


class InlineEffect(Protocol):
    """A step run in the publish pipeline itself, right after each event's publish script."""

    @property
    def scripts(self) -> tuple[LuaScript, ...]:
        """The scripts ``stage`` queues (re-sent with EVAL when the server lost them)."""
        ...

    def stage(self, pipe: Any, event: TradeEvent) -> bool:
        """Queue the effect of ``event`` on ``pipe``; False when it has none for this event."""
        ...


class Published(NamedTuple):
    """What the script did for one event."""

    log_id: bytes
    subscribers: int
    names: RouteNames  # event routes whose task messages rode in the script (not dispatched: a staged command failed)


class Publisher:
    """Publishes events on ``client`` under ``keys``; RedisEventBus owns one."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        log_maxlen: int,
        max_event_bytes: int,
        dispatcher: TaskDispatcher[Any] | None = None,
        effects: Sequence[InlineEffect] = (),
        run_max: int = PUBLISH_RUN_MAX,
        durability: Durability | None = None,
    ) -> None:
        self.client, self.keys = client, keys
        self.log_maxlen, self.max_event_bytes = log_maxlen, max_event_bytes
        self.dispatcher = dispatcher
        #: builds each event's script arguments (bus/core/staging.py)
        self.stager = Stager(keys, log_maxlen, max_event_bytes, dispatcher)
        self.waker = self.stager.waker
        self.effects = tuple(effects)
        #: events per publish_many.lua call; 1 publishes every event with its own publish.lua call
        self.run_max = run_max
        #: replicas each publish waits for (bus.core.durability); None: confirmed once the master has it
        self.durability = durability
        self._symbols_sent: set[str] = set()
        #: the connection single publishes send their one script call on (bus/core/connection.py)
        self.held = HeldConnection(client)

    def publish(self, event: TradeEvent) -> PublishReceipt:
        """Log + broadcast ``event`` atomically in one round trip (plus routed tasks, see module doc)."""
        return run(self.held, self.publish_steps(event))

    def close(self) -> None:
        self.held.close()

    def publish_many(self, events: Iterable[TradeEvent]) -> list[PublishReceipt]:
        """Publish a batch in one pipeline (one round trip). Nothing is sent if any event is invalid."""
        return run(self.client, self.publish_many_steps(events))

    def publish_steps(self, event: TradeEvent) -> Steps[PublishReceipt]:
        """``publish`` as steps, for either driver (the event is checked before the first request);
        traced when a tracer is set, the span covering the whole publish (awaits included)."""
        tracer = tracing.active_tracer()
        if tracer is None:
            return (yield from self._publish_one_steps(event))
        with tracing.publish_span(tracer, event) as span:  # its context rides with the event (log, broadcast)
            receipt = yield from self._publish_one_steps(event, tracing.current_traceparent())
            span.set_attribute("tradebus.log_id", receipt.log_id)
            return receipt

    def _publish_one_steps(self, event: TradeEvent, traceparent: str | None = None) -> Steps[PublishReceipt]:
        recorder = metrics.RECORDER
        started = perf_counter() if recorder is not None else 0.0
        item = self.stager.stage(self.stager.prepare(event, traceparent))
        if not self.effects and self.durability is None and event.symbol in self._symbols_sent:
            # one command does it: EVALSHA publish.lua (task messages and wake-ups included)
            reply = yield from PUBLISH.steps(item.keys, item.args)
            callbacks: list[Callable[[], object]] = []
            published = (yield from self._settle_steps([item], item.wake, reply, callbacks))[0]
            if callbacks:
                yield Blocking(_call_each, (callbacks,))
        else:
            published = (yield from self._durable_per_master_steps([item]))[0]
        log_id, names = published.log_id.decode(), published.names
        if item.tracked:
            names = (yield from self._send_steps([item], [log_id]))[0]
        names = (_logged(item.wake) + names[0], names[1])
        if recorder is not None:
            recorder.record_publish([item.event.event_type.value], perf_counter() - started, *names)
        return PublishReceipt(event.event_id, log_id, int(published.subscribers), *names)

    def publish_many_steps(self, events: Iterable[TradeEvent]) -> Steps[list[PublishReceipt]]:
        """``publish_many`` as steps (the whole batch is checked before the first request)."""
        recorder = metrics.RECORDER
        started = perf_counter() if recorder is not None else 0.0
        batch = [self.stager.prepare(e) for e in events]
        if not batch:
            return []
        batch = [self.stager.stage(item) for item in batch]  # every event valid: their task messages now
        results = yield from self._durable_per_master_steps(batch)
        to_send = [i for i, item in enumerate(batch) if item.tracked]
        if to_send:
            outcome = yield from self._send_steps(
                [batch[i] for i in to_send], [results[i].log_id.decode() for i in to_send]
            )
            for i, names in zip(to_send, outcome, strict=True):
                results[i] = results[i]._replace(names=names)
        for i, item in enumerate(batch):
            if item.wake is not None:
                results[i] = results[i]._replace(names=(_logged(item.wake) + results[i].names[0], results[i].names[1]))
        if recorder is not None:
            dispatched = [name for r in results for name in r.names[0]]
            refused = [name for r in results for name in r.names[1]]
            types = [item.event.event_type.value for item in batch]
            recorder.record_publish(types, perf_counter() - started, dispatched, refused)
        return [
            PublishReceipt(item.event.event_id, r.log_id.decode(), int(r.subscribers), *r.names)
            for item, r in zip(batch, results, strict=True)
        ]

    # --- the pipeline --------------------------------------------------------------------------------

    def _runs(self, batch: Sequence[Staged]) -> list[Sequence[Staged]]:
        """Runs of consecutive same-symbol events, at most ``run_max`` long."""
        runs, i, n, cap = [], 0, len(batch), max(1, self.run_max)
        while i < n:
            symbol, j = batch[i].event.symbol, i + 1
            while j < n and j - i < cap and batch[j].event.symbol == symbol:
                j += 1
            runs.append(batch[i:j])
            i = j
        return runs

    def _durable_per_master_steps(self, batch: Sequence[Staged]) -> Steps[list[Published]]:
        """``_pipeline_steps``; on a Redis Cluster with replicated publish, one pipeline per master, each
        ending with its own WAIT: WAIT counts the replicas that have *this connection's* writes, so it must
        follow them on the master's connection (replicated publish). Order per symbol holds: a symbol's
        events all go to its slot's master, in batch order."""
        groups = self._by_master(batch)
        if groups is None:
            return (yield from self._pipeline_steps(batch))
        new_symbols = {s.event.symbol for s in batch} - self._symbols_sent
        if new_symbols:  # the global set is on some master: its own command, not on a slot's pipeline
            yield Command(("SADD", self.keys.symbols(), *sorted(new_symbols)))
            self._symbols_sent |= new_symbols
        results: list[Published | None] = [None] * len(batch)
        for node, indices in groups.items():
            try:
                published = yield from self._pipeline_steps([batch[i] for i in indices], node)
            except SLOT_MOVED as e:  # refused, nothing of this pipeline written: the caller may publish again
                refresh_slots(self.client)
                raise redis.ConnectionError(f"the slot moved to another master ({e}); publish again") from e
            except (redis.ConnectionError, redis.TimeoutError):
                refresh_slots(self.client)  # the master is gone: the next publish asks the Cluster where to go
                raise
            for i, p in zip(indices, published, strict=True):
                results[i] = p
        return [p for p in results if p is not None]

    def _by_master(self, batch: Sequence[Staged]) -> dict[redis.Redis, list[int]] | None:
        """Batch indices per master client, when publishes wait for replicas on a (blocking) Cluster client."""
        if self.durability is None or not isinstance(self.client, RedisCluster):
            return None
        groups: dict[redis.Redis, list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault(slot_client(self.client, item.keys[0]), []).append(i)
        return groups

    def _pipeline_steps(self, batch: Sequence[Staged], client: redis.Redis | None = None) -> Steps[list[Published]]:
        """One pipeline for the batch (not a transaction: each script call is atomic by itself, task
        messages included; the inline effects after it are idempotent).

        A batch is one publish_many.lua call per run of consecutive same-symbol events (at most
        ``run_max``), in batch order, so it keeps its order per symbol and across symbols.
        When every run is one event long (a single publish, alternating symbols, or
        ``run_max = 1``: the pre-batching behaviour) each event is one publish.lua call."""
        runs = self._runs(batch)
        # One publish script per pipeline: after a script-cache loss every call fails with NOSCRIPT
        # and pipeline_steps re-runs them all, in order (two scripts could half succeed). Runs of
        # one event only (a single publish, symbols alternating) keep the cheaper publish.lua.
        many = len(runs) < len(batch)
        script = PUBLISH_MANY if many else PUBLISH
        pipe = (client or self.client).pipeline(transaction=False)
        new_symbols = {s.event.symbol for s in batch} - self._symbols_sent
        if new_symbols:
            pipe.sadd(self.keys.symbols(), *sorted(new_symbols))
        calls: list[tuple[int, Sequence[Staged], WakeArgs | None]] = []  # its script call, its run, its wake-ups
        for run_ in runs:
            if many:
                wake = self._run_wake(run_)
                keys, args = run_[0].keys[:3], [self.log_maxlen, self.keys.prefix]
                for item in run_:
                    args += item.run_args()
                if wake is not None:
                    keys, args = keys + list(wake.keys), args + list(wake.args)
                PUBLISH_MANY.stage(pipe, keys, args)
            else:
                wake = run_[0].wake
                PUBLISH.stage(pipe, run_[0].keys, run_[0].args)
            calls.append((len(pipe) - 1, run_, wake))  # len() counts a ClusterPipeline's queue too
            for item in run_:
                for effect in self.effects:
                    effect.stage(pipe, item.event)
        durable = self.durability
        if durable is not None:
            durable.stage(pipe)
        scripts = (script, *(s for e in self.effects for s in e.scripts))
        results = yield from pipeline_steps(pipe, scripts, repeat_last=durable is not None)
        for r in results:
            if isinstance(r, (redis.ConnectionError, redis.TimeoutError)):
                raise r
        published: list[Published] = []
        callbacks: list[Callable[[], object]] = []
        for at, run_, wake in calls:
            published += yield from self._settle_steps(run_, wake, results[at], callbacks)
        self._symbols_sent |= new_symbols
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:  # an inline effect failed after the events were logged: report, do not lose them
            log.error("publish pipeline: %d command(s) failed after logging: %s", len(failed), failed[0])
        if callbacks:
            # the staged task messages are on the broker now; Celery's after_task_publish receivers and
            # task-sent events may do broker I/O: a blocking step (the asyncio driver runs it in a thread)
            yield Blocking(_call_each, (callbacks,))
        if durable is not None:  # after the callbacks: the task messages are sent, replicated or not
            durable.check(results[-1], [p.log_id.decode() for p in published])
        return published

    def _settle_steps(
        self, run_: Sequence[Staged], wake: WakeArgs | None, reply: Any, callbacks: list[Callable[[], object]]
    ) -> Steps[list[Published]]:
        """Read one script call's reply (publish.lua's or publish_many.lua's): each event's log id and
        broadcast count, whose task messages went out (their ``after_commit`` joins ``callbacks``) and
        whose did not (the script recorded those pending: beat re-dispatches them); then send the
        wake-ups the script could not enqueue itself."""
        if isinstance(reply, Exception):
            raise reply
        failed = set(reply[-3])
        out = []
        for k, item in enumerate(run_):
            if k + 1 in failed:
                log.error("task messages of %s not enqueued (left pending for re-dispatch)", item.event.event_id)
                names: RouteNames = ((), item.staged)
            else:
                names = (item.staged, ())
                callbacks.extend(item.after_commit)
            out.append(Published(reply[2 * k], reply[2 * k + 1], names))
        yield from self.send_wakes_steps(run_[0].event.symbol, wake, reply[-2], reply[-1], out[-1].log_id)
        return out

    # --- log routes --------------------------------------------------------------------------------

    def _run_wake(self, run_: Sequence[Staged]) -> WakeArgs | None:
        """The wake arguments of a run of one symbol's events: every log route any of them wakes."""
        routes = {r.name: r for item in run_ if item.wake is not None for r in item.wake.routes}
        if not routes or self.waker is None:
            return None
        return self.waker.wake_of(run_[0].event.symbol, list(routes.values()))

    def send_wakes_steps(
        self, symbol: str, wake: WakeArgs | None, woken: list[int], unsent: list[int], log_id: bytes
    ) -> Steps[None]:
        """Send the wake-ups the script did not enqueue: every one whose flag it set when the broker is
        separate; on the same server, those whose message it did not find stored."""
        if wake is None or self.waker is None or self.dispatcher is None:
            return
        send = unsent if self.dispatcher.stages_in_bus_pipeline else woken
        if send:
            yield Blocking(self.waker.send_wakes, (symbol, [wake.routes[i - 1] for i in send], log_id.decode()))

    def stage_publish(self, pipe: Any, event: TradeEvent, hooks: list[Callable[[list[Any]], None]]) -> None:
        """Queue the publish of ``event`` on ``pipe``, a MULTI the caller executes (a log-route effect's
        transaction): log + broadcast, its log routes' wake flags and, with the broker on the bus's server,
        its event routes' task messages commit with the caller's writes. What must be sent after (a
        separate broker; Celery's publish signals) is appended to ``hooks``, called with the EXEC results."""
        item = self.stager.stage(self.stager.prepare(event, tracing.current_traceparent()))  # a drain batch's span
        PUBLISH.load(pipe)  # a NOSCRIPT inside MULTI would fail this command alone
        PUBLISH.stage(pipe, item.keys, item.args)
        at = len(pipe) - 1

        def send_after(results: list[Any]) -> None:
            reply = results[at]
            if isinstance(reply, Exception):
                return
            callbacks: list[Callable[[], object]] = []
            run(self.client, self._settle_steps([item], item.wake, reply, callbacks))
            if item.tracked:
                run(self.client, self._send_steps([item], [reply[0].decode()]))
            _call_each(callbacks)

        hooks.append(send_after)

    def _send_steps(self, items: Sequence[Staged], log_ids: list[str]) -> Steps[list[RouteNames]]:
        """Enqueue the tasks of logged events whose script recorded them pending (beat's safety net)."""
        if self.dispatcher is None:  # only a dispatcher gives an event routes
            return [NOT_ROUTED for _ in items]
        try:
            sent = yield Blocking(self.dispatcher.send_many, ([(s.event, s.payload, s.routes) for s in items], log_ids))
            return list(sent)
        except DispatchError:
            raise
        except Exception:  # noqa: BLE001 - the event is logged; beat re-dispatches what stays pending
            log.exception("dispatch failed; %d event(s) left pending for re-dispatch", len(items))
            return [((), tuple(r.name for r in s.routes)) for s in items]


def _call_each(callbacks: Sequence[Callable[[], object]]) -> None:
    for callback in callbacks:
        callback()


def _logged(wake: WakeArgs | None) -> tuple[str, ...]:
    """Log routes take the event from the log itself: reported as dispatched once it is logged."""
    return tuple(r.name for r in wake.routes) if wake is not None else ()
