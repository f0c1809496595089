"""Publishing: one atomic round trip per event (or per batch), with inline effects and task dispatch.

``publish.lua`` appends the event to its symbol's log (``MAXLEN ~``), records the heads and
broadcasts it, atomically; ``publish_many.lua`` does the same for a run of consecutive same-symbol
events in one call. Inline effects (the state projection of ``RedisEventBus(apply_state=True)``) and
task messages staged by the dispatcher join the same pipeline: see bus/core/dispatching.py.

Everything here is written as steps (bus/core/steps.py): preparing the script arguments, choosing
the scripts, staging the pipeline and reading its replies happen once, for both buses. ``publish`` /
``publish_many`` run them on the blocking client; ``bus.aio`` runs ``publish_steps`` /
``publish_many_steps`` on a redis.asyncio client (then ``client`` is that one, and the dispatcher's
``send_many`` runs in a worker thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any, NamedTuple, Protocol

import redis

from bus.core.dispatching import LogRouteWaker, NamedRoute, RouteNames, TaskDispatcher, WakeArgs
from bus.core.durability import Durability
from bus.core.keys import Keys, channel
from bus.core.scripts import LuaScript, pipeline_steps
from bus.core.steps import Blocking, Steps, run
from bus.errors import DispatchError
from bus.events.model import TradeEvent
from bus.events.types import EventType
from bus.observability import metrics, tracing

log = logging.getLogger(__name__)

PUBLISH = LuaScript("bus.core", "publish.lua", prelude="wake.lua")
#: publish.lua for a run of consecutive same-symbol events in one call (publish_many)
PUBLISH_MANY = LuaScript("bus.core", "publish_many.lua", prelude="wake.lua")
#: most events one publish_many.lua call takes (bounds how long one script holds the server)
PUBLISH_RUN_MAX = 100
NOT_ROUTED: RouteNames = ((), ())


class InlineEffect(Protocol):
    """A step run in the publish pipeline itself, right after each event's publish script."""

    @property
    def scripts(self) -> tuple[LuaScript, ...]:
        """The scripts ``stage`` queues (loaded first when the pipeline is a transaction)."""
        ...

    def stage(self, pipe: Any, event: TradeEvent) -> bool:
        """Queue the effect of ``event`` on ``pipe``; False when it has none for this event."""
        ...


@dataclass(frozen=True)
class PublishReceipt:
    event_id: str
    log_id: str
    subscribers: int
    dispatched: tuple[str, ...] = ()  # route names enqueued
    not_dispatched: tuple[str, ...] = ()  # route names the broker did not take (re-dispatched by beat)
    already_logged: bool = False  # a sequenced publish (bus/core/sequenced.py) found it logged: nothing sent


class Staged(NamedTuple):
    """One validated, encoded event and the arguments of its publish script."""

    event: TradeEvent
    payload: bytes  # the event JSON
    keys: list[str]  # publish.lua's KEYS: log, heads, pending dispatch of the symbol
    args: list[Any]  # publish.lua's ARGV
    routes: Sequence[NamedRoute]  # its routed tasks (none without a dispatcher)
    wake: WakeArgs | None = None  # its log routes: their wake flags are part of keys and args

    @property
    def tracked(self) -> bool:
        """The script records a pending-dispatch entry (the tasks are sent after it)."""
        return self.args[4] == b"1"


class Published(NamedTuple):
    """What the pipeline did for one event."""

    log_id: bytes
    subscribers: int
    names: RouteNames  # routes staged in the pipeline (dispatched, or not when the pipeline failed after the log)


class _Slot(NamedTuple):
    """Where one event's reply sits in the pipeline results."""

    command: int  # index of its publish script call
    pair: int  # index of its (log id, subscribers) pair in a publish_many.lua reply; -1 for publish.lua
    staged: tuple[str, ...]  # route names the dispatcher staged for it
    wake: WakeArgs | None = None  # on a run's first slot: the log routes its script call wakes
    symbol: str = ""


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
        self.waker = dispatcher if isinstance(dispatcher, LogRouteWaker) else None
        self.effects = tuple(effects)
        #: events per publish_many.lua call; 1 publishes every event with its own publish.lua call
        self.run_max = run_max
        #: replicas each publish waits for (bus.core.durability); None: confirmed once the master has it
        self.durability = durability
        self._symbol_keys: dict[str, tuple[str, str, str]] = {}
        self._channels: dict[tuple[str, EventType], tuple[str, str]] = {}  # channel, type value
        self._symbols_sent: set[str] = set()

    def publish(self, event: TradeEvent) -> PublishReceipt:
        """Log + broadcast ``event`` atomically in one round trip (plus routed tasks, see module doc)."""
        return run(self.client, self.publish_steps(event))

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
        item = self._prepare(event, traceparent)
        staged = bool(item.routes) and not item.tracked
        one_command = not staged and not self.effects and self.durability is None
        if one_command and event.symbol in self._symbols_sent:  # one command does it
            raw_id, n, woken, unsent = yield from PUBLISH.steps(item.keys, item.args)
            yield from self.send_wakes_steps(event.symbol, item.wake, woken, unsent, raw_id)
            names = NOT_ROUTED
        else:
            raw_id, n, names = (yield from self._pipeline_steps([item]))[0]
        log_id = raw_id.decode()
        if item.tracked:
            names = (yield from self._send_steps([item], [log_id]))[0]
        names = (_logged(item.wake) + names[0], names[1])
        if recorder is not None:
            recorder.record_publish([item.args[2]], perf_counter() - started, *names)
        return PublishReceipt(event.event_id, log_id, int(n), *names)

    def publish_many_steps(self, events: Iterable[TradeEvent]) -> Steps[list[PublishReceipt]]:
        """``publish_many`` as steps (the whole batch is checked before the first request)."""
        recorder = metrics.RECORDER
        started = perf_counter() if recorder is not None else 0.0
        batch = [self._prepare(e) for e in events]
        if not batch:
            return []
        results = yield from self._pipeline_steps(batch)
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
            recorder.record_publish([item.args[2] for item in batch], perf_counter() - started, dispatched, refused)
        return [
            PublishReceipt(item.event.event_id, r.log_id.decode(), int(r.subscribers), *r.names)
            for item, r in zip(batch, results, strict=True)
        ]

    # --- one event's script arguments ----------------------------------------------------------------

    def _prepare(self, event: Any, traceparent: str | None = None) -> Staged:
        if not isinstance(event, TradeEvent):
            raise TypeError(f"publish() takes a TradeEvent, not {type(event).__name__}")
        payload = event.encode(self.max_event_bytes)
        routes: Sequence[NamedRoute] = ()
        tracked = False
        if self.dispatcher is not None:
            routes = self.dispatcher.routes_for(event)
            tracked = bool(routes) and not self.dispatcher.stages_in_bus_pipeline
        chan, type_value = self._channel_of(event)
        keys = list(self._keys_for(event.symbol))
        args = [
            payload,
            chan,
            type_value,
            self.log_maxlen,
            b"1" if tracked else b"0",
            traceparent or 0,  # the publish span's context to carry with the event; 0: none (tracing off)
            self.keys.prefix,
        ]
        wake = self.waker.wake_for(event) if self.waker is not None else None
        if wake is not None:  # log routes: their wake flags are set in the same script (see wake.lua)
            keys += wake.keys
            args += wake.args
        return Staged(event, payload, keys, args, routes, wake)

    def _keys_for(self, symbol: str) -> tuple[str, str, str]:
        k = self._symbol_keys.get(symbol)
        if k is None:
            k = self._symbol_keys[symbol] = (
                self.keys.log(symbol),
                self.keys.heads(symbol),
                self.keys.pending_dispatch_for(symbol),
            )
        return k

    def _channel_of(self, event: TradeEvent) -> tuple[str, str]:
        found = self._channels.get((event.symbol, event.event_type))
        if found is None:
            t = event.event_type.value
            found = self._channels[(event.symbol, event.event_type)] = (channel(event.symbol, t), t)
        return found

    # --- the pipeline --------------------------------------------------------------------------------

    def _runs(self, batch: Sequence[Staged]) -> list[tuple[int, int]]:
        """[start, end) ranges of consecutive same-symbol events, at most ``run_max`` long."""
        runs, i, n, cap = [], 0, len(batch), max(1, self.run_max)
        while i < n:
            symbol, j = batch[i].event.symbol, i + 1
            while j < n and j - i < cap and batch[j].event.symbol == symbol:
                j += 1
            runs.append((i, j))
            i = j
        return runs

    def _pipeline_steps(self, batch: Sequence[Staged]) -> Steps[list[Published]]:
        """One pipeline for the batch; MULTI when the dispatcher stages task messages in it.

        A batch is one publish_many.lua call per run of consecutive same-symbol events (at most
        ``run_max``), in batch order, so it keeps its order per symbol and across symbols.
        When every run is one event long (a single publish, alternating symbols, or
        ``run_max = 1``: the pre-batching behaviour) each event is one publish.lua call."""
        d = self.dispatcher
        stager = d if d is not None and d.stages_in_bus_pipeline and any(s.routes for s in batch) else None
        runs = self._runs(batch)
        # One publish script per pipeline: after a script-cache loss every call fails with NOSCRIPT
        # and execute_pipeline re-runs them all, in order (two scripts could half succeed). Runs of
        # one event only (a single publish, symbols alternating) keep the cheaper publish.lua.
        many = len(runs) < len(batch)
        scripts = ((PUBLISH_MANY,) if many else (PUBLISH,)) + tuple(s for e in self.effects for s in e.scripts)
        pipe = self.client.pipeline(transaction=stager is not None)
        if stager is not None:  # a NOSCRIPT inside MULTI would let the task messages go out without the log
            for script in scripts:
                script.load(pipe)
        new_symbols = {s.event.symbol for s in batch} - self._symbols_sent
        if new_symbols:
            pipe.sadd(self.keys.symbols(), *sorted(new_symbols))
        after_commit: list[Callable[[], object]] = []
        slots = [slot for i, j in runs for slot in self._stage_run(pipe, batch[i:j], many, stager, after_commit)]
        durable = self.durability
        in_pipeline = durable is not None and stager is None  # WAIT inside MULTI would not wait: after EXEC
        if durable is not None and in_pipeline:
            durable.stage(pipe)
        results = yield from pipeline_steps(pipe, scripts, repeat_last=in_pipeline)
        published = self._published(results, slots, staged_tasks=stager is not None)
        for slot in slots:
            reply = results[slot.command]
            if slot.wake is not None and not isinstance(reply, Exception):  # woken, unsent: the reply's last two
                last_id = reply[0] if slot.pair < 0 else reply[-4]
                yield from self.send_wakes_steps(slot.symbol, slot.wake, reply[-2], reply[-1], last_id)
        self._symbols_sent |= new_symbols
        if after_commit and not any(isinstance(r, Exception) for r in results):
            # the staged task messages are on the broker now; Celery's after_task_publish receivers and
            # task-sent events may do broker I/O: a blocking step (the asyncio driver runs it in a thread)
            yield Blocking(_call_each, (after_commit,))
        if durable is not None:  # after the callbacks: the task messages are sent, replicated or not
            acked = results[-1] if in_pipeline else (yield from durable.wait_steps())
            durable.check(acked, [p.log_id.decode() for p in published])
        return published

    def _stage_run(
        self,
        pipe: Any,
        run: Sequence[Staged],
        many: bool,
        stager: TaskDispatcher[Any] | None,
        after_commit: list[Callable[[], object]],
    ) -> list[_Slot]:
        """Queue one run's publish script, then each event's inline effects and staged task messages."""
        if many:
            margs: list[Any] = [self.log_maxlen, self.keys.prefix]
            for item in run:
                margs += (item.args[0], item.args[1], item.args[2], b"1" if item.tracked else b"")
            keys, wake = run[0].keys[:3], self._run_wake(run)
            if wake is not None:
                keys, margs = keys + list(wake.keys), margs + list(wake.args)
            PUBLISH_MANY.stage(pipe, keys, margs)
        else:
            wake = run[0].wake
            PUBLISH.stage(pipe, run[0].keys, run[0].args)
        at = len(pipe) - 1  # len() counts the queued commands of a Pipeline and a ClusterPipeline alike
        slots = []
        for k, item in enumerate(run):
            for effect in self.effects:
                effect.stage(pipe, item.event)
            staged: tuple[str, ...] = ()
            if stager is not None and item.routes:
                staged = stager.stage(pipe, item.event, item.payload, item.routes, after_commit)
            slots.append(_Slot(at, k if many else -1, staged, wake if k == 0 else None, item.event.symbol))
        return slots

    def _published(self, results: list[Any], slots: list[_Slot], staged_tasks: bool) -> list[Published]:
        for r in results:
            if isinstance(r, (redis.ConnectionError, redis.TimeoutError)):
                raise r
        out: list[Published] = []
        for slot in slots:
            res = results[slot.command]
            if isinstance(res, Exception):
                raise res
            log_id, n = res[:2] if slot.pair < 0 else res[2 * slot.pair : 2 * slot.pair + 2]
            out.append(Published(log_id, n, (slot.staged, ())))
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:  # an effect or staged dispatch failed after the event was logged: report, do not lose it
            log.error("publish pipeline: %d command(s) failed after logging: %s", len(failed), failed[0])
            if staged_tasks:
                out = [p._replace(names=((), p.names[0])) for p in out]
        return out

    # --- log routes --------------------------------------------------------------------------------

    def _run_wake(self, run: Sequence[Staged]) -> WakeArgs | None:
        """The wake arguments of a run of one symbol's events: every log route any of them wakes."""
        routes = {r.name: r for item in run if item.wake is not None for r in item.wake.routes}
        if not routes or self.waker is None:
            return None
        return self.waker.wake_of(run[0].event.symbol, list(routes.values()))

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
        item = self._prepare(event, tracing.current_traceparent())  # inside a drain batch's span, if traced
        PUBLISH.load(pipe)  # a NOSCRIPT inside MULTI would fail this command alone
        PUBLISH.stage(pipe, item.keys, item.args)
        at = len(pipe) - 1
        after_commit: list[Callable[[], object]] = []
        if item.routes and not item.tracked and self.dispatcher is not None:
            self.dispatcher.stage(pipe, event, item.payload, item.routes, after_commit)

        def send_after(results: list[Any]) -> None:
            reply = results[at]
            if isinstance(reply, Exception):
                return
            run(self.client, self.send_wakes_steps(event.symbol, item.wake, reply[2], reply[3], reply[0]))
            if item.tracked:
                run(self.client, self._send_steps([item], [reply[0].decode()]))
            for committed in after_commit:
                committed()

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
