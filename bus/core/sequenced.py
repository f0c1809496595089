"""Sequenced publishing: events numbered by their source are logged at most once (exactly-once outbox).

An executor's outbox numbers its events (bus/executor/outbox.py) and publishes them here, through
``publish_sequenced.lua``: per (source, symbol) a mark (``Keys.outbox_mark``) holds the highest number
logged, and an event numbered at or below it is skipped in the same atomic step. So resending an
outbox row after a crash between publish and delete, or after a reply lost when Redis had already run
the script (redis-py's own retries included), never logs it twice.

The tasks follow the event. A broker on the bus's server gets the task messages from the script
itself (sent with the event or not at all, so a skipped event sends none). A separate broker gets
them after the script, for new events only; the script records those pending, so beat re-dispatches
what a crash left unsent. Inline effects (the state projection) run for every event, new or skipped:
they are idempotent, and a skipped event's effect may be the one a crash interrupted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from time import perf_counter
from typing import Any, NamedTuple

import redis

from bus.core import steps
from bus.core.dispatching import RouteNames, WakeArgs
from bus.core.publisher import Publisher, PublishReceipt
from bus.core.scripts import LuaScript, execute_pipeline
from bus.core.staging import PRELUDE, Staged
from bus.errors import DispatchError
from bus.events.model import TradeEvent
from bus.observability import metrics, tracing

log = logging.getLogger(__name__)

PUBLISH_SEQUENCED = LuaScript("bus.core", "publish_sequenced.lua", prelude=PRELUDE)


class Numbered(NamedTuple):
    """One numbered event, made ready as for any publish (bus/core/staging.py)."""

    seq: int
    item: Staged

    @property
    def event(self) -> TradeEvent:
        return self.item.event

    @property
    def args(self) -> list[Any]:
        """Its part of publish_sequenced.lua's ARGV: its number, then as in publish_many.lua."""
        return [self.seq, *self.item.run_args()]


class SequencedPublisher:
    """Publishes numbered events through ``publisher`` (its client, keys, limits, dispatcher, effects)
    for ``source``; ``origin`` names the numbering (an outbox file): numbers of another origin under
    the same source are never compared, those events are logged."""

    def __init__(self, publisher: Publisher, source: str, origin: str) -> None:
        self.publisher, self.source, self.origin = publisher, source, origin
        self._symbols_sent: set[str] = set()
        self._keys: dict[str, list[str]] = {}  # per symbol: the script's KEYS

    def publish(self, events: Sequence[tuple[int, TradeEvent]]) -> list[PublishReceipt]:
        """Publish ``(number, event)`` pairs (numbers increasing) in one pipeline. An event already logged
        under its number is skipped: ``receipt.already_logged``. Nothing is sent if any event is invalid."""
        tracer = tracing.active_tracer()
        if tracer is None:
            return self._metered(events)
        if len(events) == 1:  # the executor's publish: its span is current throughout (task messages too)
            with tracing.publish_span(tracer, events[0][1]) as span:
                receipts = self._metered(events, [span])
                _close(span, receipts[0])
                return receipts
        spans = [tracing.start_publish_span(tracer, event) for _, event in events]  # an outbox flush
        try:
            receipts = self._metered(events, spans)
            for span, receipt in zip(spans, receipts, strict=True):
                _close(span, receipt)
            return receipts
        finally:
            for span in spans:
                span.end()

    def _metered(self, events: Sequence[tuple[int, TradeEvent]], spans: Sequence[Any] = ()) -> list[PublishReceipt]:
        recorder = metrics.RECORDER
        if recorder is None:
            return self._publish(events, spans)
        started = perf_counter()
        receipts = self._publish(events, spans)
        fresh = [(event, r) for (_, event), r in zip(events, receipts, strict=True) if not r.already_logged]
        recorder.record_publish([e.event_type.value for e, _ in fresh], perf_counter() - started,
                                [n for _, r in fresh for n in r.dispatched],
                                [n for _, r in fresh for n in r.not_dispatched])  # fmt: skip
        return receipts

    def _publish(self, events: Sequence[tuple[int, TradeEvent]], spans: Sequence[Any]) -> list[PublishReceipt]:
        p = self.publisher
        if spans:  # each event prepared and staged inside its publish span: the script carries its context
            with_spans = list(zip(events, spans, strict=True))
            prepared = [(seq, self._in(span, p.stager.prepare, event)) for (seq, event), span in with_spans]
            items = [Numbered(seq, self._in(span, p.stager.stage, item))
                     for (seq, item), (_, span) in zip(prepared, with_spans, strict=True)]  # fmt: skip
        else:
            prepared = [(seq, p.stager.prepare(event)) for seq, event in events]
            items = [Numbered(seq, p.stager.stage(item)) for seq, item in prepared]  # all valid: their tasks now
        if not items:
            return []
        new_symbols = {item.event.symbol for item in items} - self._symbols_sent
        durable = p.durability
        if len(items) == 1 and not p.effects and not new_symbols and durable is None:  # one command does it
            keys, args, wake = self._script_call(items)
            reply = PUBLISH_SEQUENCED.call(p.client, keys, args)
            self._wake(items, wake, reply)
            return self._receipts(items, [[*reply[:3], 1 in reply[-3]]])
        pipe = p.client.pipeline(transaction=False)
        if new_symbols:
            pipe.sadd(p.keys.symbols(), *sorted(new_symbols))
        slots: list[tuple[int, int]] = []  # per item: its script call, its place in that call's reply
        calls: list[tuple[int, list[Numbered], WakeArgs | None]] = []
        for run in self._runs(items):
            keys, args, wake = self._script_call(run)
            PUBLISH_SEQUENCED.stage(pipe, keys, args)
            at = len(pipe) - 1  # counts a ClusterPipeline's queue too (its command_stack stays empty)
            calls.append((at, run, wake))
            for k, item in enumerate(run):
                for effect in p.effects:
                    effect.stage(pipe, item.event)
                slots.append((at, k))
        if durable is not None:  # replicated publish: WAIT last, so it covers every write queued before it
            durable.stage(pipe)
        scripts = (PUBLISH_SEQUENCED, *(s for e in p.effects for s in e.scripts))
        results = execute_pipeline(pipe, scripts, repeat_last=durable is not None)
        for r in results:
            if isinstance(r, (redis.ConnectionError, redis.TimeoutError)):
                raise r
        replies = []
        for at, k in slots:
            reply = results[at]
            if isinstance(reply, Exception):
                raise reply
            replies.append([*reply[3 * k : 3 * k + 3], k + 1 in reply[-3]])  # + its task messages failed
        for at, run, wake in calls:
            self._wake(run, wake, results[at])
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:  # an effect failed after the events were logged: report, do not lose them
            log.error("sequenced publish: %d effect(s) failed after logging: %s", len(failed), failed[0])
        self._symbols_sent |= new_symbols
        receipts = self._receipts(items, replies)
        if durable is not None:  # after the tasks went out, as Publisher does: the events are logged either way
            # a resend's events count too: the script rewrote their mark, so WAIT covers the first write
            durable.check(results[-1], [r.log_id for r in receipts if r.log_id])
        return receipts

    @staticmethod
    def _in(span: Any, step: Any, arg: Any) -> Any:
        """``step(arg)`` with ``span`` current; prepare gets the span's traceparent to carry."""
        with tracing.current(span):
            if isinstance(arg, TradeEvent):
                return step(arg, tracing.current_traceparent())
            return step(arg)

    def _script_call(self, run: list[Numbered]) -> tuple[list[Any], list[Any], WakeArgs | None]:
        """KEYS and ARGV of publish_sequenced.lua for a run of one symbol's events, and the log routes
        it wakes (their wake-up arguments are part of both)."""
        p, symbol = self.publisher, run[0].event.symbol
        keys = self._keys.get(symbol)
        if keys is None:
            k = p.keys
            keys = self._keys[symbol] = [k.log(symbol), k.heads(symbol), k.pending_dispatch_for(symbol),
                                         k.outbox_mark(symbol, self.source)]  # fmt: skip
        args: list[Any] = [p.log_maxlen, p.keys.prefix, self.origin]
        for item in run:
            args += item.args
        routes = {r.name: r for n in run if n.item.wake is not None for r in n.item.wake.routes}
        wake = p.waker.wake_of(symbol, list(routes.values())) if routes and p.waker is not None else None
        if wake is not None:
            return keys + list(wake.keys), args + list(wake.args), wake
        return keys, args, None

    def _wake(self, run: list[Numbered], wake: WakeArgs | None, reply: Any) -> None:
        """Send the wake-ups the script did not enqueue (its reply's last two: woken, unsent)."""
        if wake is None or isinstance(reply, Exception) or not reply[-2]:
            return
        logged = [reply[3 * k] for k in range(len(run)) if reply[3 * k + 2]]
        run_steps = self.publisher.send_wakes_steps(run[0].event.symbol, wake, reply[-2], reply[-1], logged[-1])
        steps.run(self.publisher.client, run_steps)

    def _runs(self, items: list[Numbered]) -> list[list[Numbered]]:
        """Consecutive same-symbol events, at most ``publisher.run_max`` per script call."""
        runs: list[list[Numbered]] = []
        cap = max(1, self.publisher.run_max)
        for item in items:
            if runs and runs[-1][0].event.symbol == item.event.symbol and len(runs[-1]) < cap:
                runs[-1].append(item)
            else:
                runs.append([item])
        return runs

    def _receipts(self, items: list[Numbered], replies: list[Any]) -> list[PublishReceipt]:
        """One receipt per event from its reply ``[log_id, subscribers, logged_now, tasks_failed]``."""
        to_send = [i for i, reply in enumerate(replies) if reply[2] and items[i].item.tracked]
        outcome = self._send([items[i].item for i in to_send], [replies[i][0] for i in to_send])
        sent = dict(zip(to_send, outcome, strict=True))
        out = []
        for i, (n, (log_id, subscribers, logged_now, tasks_failed)) in enumerate(zip(items, replies, strict=True)):
            item = n.item
            event_id, log_text = item.event.event_id, log_id.decode()
            if not logged_now:
                out.append(PublishReceipt(event_id, log_text, 0, already_logged=True))
                continue
            dispatched: tuple[str, ...]
            if tasks_failed:  # the script recorded it pending: beat re-dispatches it
                log.error("task messages of %s not enqueued (left pending for re-dispatch)", event_id)
                dispatched, not_dispatched = (), tuple(item.staged)
            else:
                for committed in item.after_commit:  # its staged task messages went out with the log write
                    committed()
                dispatched, not_dispatched = sent.get(i, (item.staged, ()))
            logged = tuple(r.name for r in item.wake.routes) if item.wake is not None else ()
            out.append(PublishReceipt(event_id, log_text, int(subscribers), logged + dispatched, not_dispatched))
        return out

    def _send(self, items: list[Staged], log_ids: list[bytes]) -> list[RouteNames]:
        """Enqueue the tasks of newly logged events on a separate broker (the script left them pending)."""
        d = self.publisher.dispatcher
        if not items or d is None:
            return []
        try:
            return list(d.send_many([(i.event, i.payload, i.routes) for i in items], [x.decode() for x in log_ids]))
        except DispatchError:
            raise
        except Exception:  # noqa: BLE001 - the events are logged; beat re-dispatches what stays pending
            log.exception("dispatch failed; %d event(s) left pending for re-dispatch", len(items))
            return [((), tuple(r.name for r in i.routes)) for i in items]


def _close(span: Any, receipt: PublishReceipt) -> None:
    span.set_attribute("tradebus.log_id", receipt.log_id)
    if receipt.already_logged:  # a resend the script skipped: the event's trace is its first publish's
        span.set_attribute("tradebus.already_logged", True)
