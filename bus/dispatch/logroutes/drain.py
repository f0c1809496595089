"""The drain: one (route, symbol) at a time, in log order, each batch's effects and acks in one transaction.

``Drainer.run`` is what the wake-up task does:

1. take the lease (SET NX PX token; a redelivered task whose token still holds it takes it back), WATCH
   it and read with drain.lua (fenced: only the token holder reads), in one round trip;
2. per batch: run the route's effect, which stages its writes on a transaction, then MULTI {effects,
   XACK, renew lease and flag, the next read} EXEC. If the lease changed hands since the WATCH, EXEC does
   nothing and this drainer stops: an effect is never applied by two drainers, and never without its ack
   (effectively-once effects, Race 3 in the design note). When the next read returned entries, WATCH the
   lease again and check it is still this drainer's before applying them;
3. end when drain.lua finds nothing pending and nothing new: that same call releases the lease and deletes
   the wake flag (Race 1), inside the last transaction; or hand over (same token) after ``time_budget`` or
   for a retry's backoff. A drain of one small batch costs two round trips.

Failures: an effect that raises on a batch of several entries commits nothing; the next reads hand out
the group's pending entries one at a time (drain.lua reads its own pending entries first), so the
entry that fails is found alone. A failing entry is retried with the route's backoff (the lease is kept
through the backoff, so nothing overtakes it) and dead-lettered with its log id, in the same
transaction as its ack, once it was tried ``retry.max_retries + 1`` times, counting the deliveries of
drainers that died on it (Race 5). An entry trimmed from the log before it was acknowledged, and
entries trimmed before the group read them, are dead-lettered too, never skipped silently (Race 4).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.exceptions import NoScriptError

from bus.core.connection import SLOT_MOVED, refresh_slots, slot_client
from bus.core.keys import Keys
from bus.core.scripts import LuaScript
from bus.core.wire import MAX_SEQ, entry_traceparent, format_id, parse_id
from bus.dispatch.deadletters import dead_letter
from bus.dispatch.logroutes.config import LogRouteConfig
from bus.dispatch.logroutes.effects import Batch, Effect, LogEntry
from bus.dispatch.logroutes.roundtrips import RoundTrips
from bus.dispatch.logroutes.wake import CONSUMER
from bus.dispatch.routing import Route
from bus.errors import EventValidationError
from bus.events.model import TradeEvent
from bus.observability import metrics, tracing

log = logging.getLogger(__name__)
# Jitter from a generator of our own: the global one belongs to the application (which may seed it).
_JITTER = random.Random()

READ = LuaScript("bus.dispatch.logroutes", "drain.lua")
#: Drainer.run outcomes
DONE, BUSY, LOST, MORE, RETRY = "done", "busy", "lost", "more", "retry"


@dataclass
class Outcome:
    """``status``: done (drained, lease released), busy (another drainer holds the lease), lost (the lease
    changed hands mid-way), more (time budget spent: continue with ``token``), retry (an effect failed:
    continue with ``token`` after ``countdown`` seconds)."""

    status: str
    token: str = ""
    acked: int = 0
    dead_lettered: int = 0
    countdown: float = 0.0
    applied: int = 0  # entries the route's effect applied (of acked)
    latency_ms: int = 0  # their publish-to-commit milliseconds, summed (log id time to this clock)


@dataclass
class _Settled:
    """What one read turned into: ids to acknowledge (their effects staged), and what comes next."""

    acked: list[bytes] = field(default_factory=list)
    applied: list[bytes] = field(default_factory=list)  # of acked: the entries the effect applied
    dead: int = 0
    retry_in: float | None = None  # an effect failed: keep the lease, retry after this many seconds
    isolate: bool = False  # an effect failed on several entries: commit nothing, re-read one at a time


def new_token() -> str:
    return uuid.uuid4().hex


class SlotMovedError(redis.ConnectionError):
    """The symbol's slot moved (a Cluster failover or resharding) mid-drain: nothing of the batch in flight
    committed (its transaction was refused as a whole); the slot map is refreshed, drain again."""


class Drainer:
    """Drains one (route, symbol) with ``effect``; ``context`` and ``publisher`` are handed to the effect.

    Reads (the effect's ``batch.client``) go through ``client``, which may be a RedisCluster; the lease,
    the read and the transaction go to the master of the symbol's slot (``slot_client``): every key they
    name is in the symbol's slot, dead letters and risk's day totals included (bus.core.keys)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        route: Route,
        symbol: str,
        effect: Effect,
        *,
        config: LogRouteConfig | None = None,
        context: Any = None,
        publisher: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.keys, self.route, self.symbol, self.effect = client, keys, route, symbol, effect
        self.config = config or LogRouteConfig()
        self.context, self.publisher, self.clock = context, publisher, clock
        self.log_key = keys.log(symbol)
        self.lease_key = keys.drain_lease(route.name, symbol)
        self.flag_key = keys.wake_flag(route.name, symbol)

    def run(self, token: str | None = None) -> Outcome:
        """Drain until nothing is left, the time budget is spent or an effect needs a retry."""
        token = token or new_token()
        self.writer = slot_client(self.client, self.log_key)
        try:
            rt = RoundTrips(self.writer)
        except (redis.ConnectionError, redis.TimeoutError):
            refresh_slots(self.client)  # the slot's master is gone: the next drain asks the Cluster again
            raise
        try:
            # one round trip: take the lease (or find it ours: a redelivered wake-up), WATCH it, read
            _, _, reply = rt.send(("SET", self.lease_key, token, "NX", "PX", self.config.lease_ms),
                                  ("WATCH", self.lease_key), self._read(token))  # fmt: skip
            reply = self._scripted(rt, reply, token)
            if _text(reply[0]) == LOST:
                return Outcome(BUSY)
            return self._drain(rt, token, reply)
        except SLOT_MOVED as e:
            refresh_slots(self.client)
            raise SlotMovedError(f"{self.route.name}/{self.symbol}: the slot moved mid-drain ({e})") from e
        except (redis.ConnectionError, redis.TimeoutError):
            refresh_slots(self.client)
            raise
        finally:
            rt.close()

    def _read(self, token: str, script: str = "EVALSHA") -> tuple[Any, ...]:
        return (script, READ.sha if script == "EVALSHA" else READ.body, 3, self.log_key, self.lease_key,
                self.flag_key, self.route.name, CONSUMER, token, self.config.batch)  # fmt: skip

    def _scripted(self, rt: RoundTrips, reply: Any, token: str) -> Any:
        """The read's reply; after a script-cache loss (NOSCRIPT) the read again as EVAL."""
        if isinstance(reply, NoScriptError):
            reply = rt.send(self._read(token, "EVAL"))[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _drain(self, rt: RoundTrips, token: str, reply: Any) -> Outcome:
        """Apply what each read returned, one transaction per batch, the next read inside it (WATCHing the
        lease): the last one, finding nothing, releases the lease and deletes the flag as it commits."""
        deadline = self.clock() + self.config.time_budget
        out = Outcome(DONE, token)
        while True:
            kind = _text(reply[0])
            if kind in (DONE, LOST):
                out.status = kind
                return out
            started = time.perf_counter()
            tx = self.writer.pipeline(transaction=True)  # collects the effect's commands
            hooks: list[Callable[[list[Any]], None]] = []
            if kind == "gap":
                settled = self._skip_gap(tx, reply)
            else:
                entries, deliveries = (reply[2], int(reply[1])) if kind == "pending" else (reply[1], 0)
                settled = self._settle(tx, entries, deliveries, hooks)
            if settled.isolate:  # nothing committed; still WATCHing: the next read takes one entry
                reply = self._scripted(rt, rt.send(self._read(token))[0], token)
                continue
            go_on = settled.retry_in is None and self.clock() < deadline
            hold = self.config.lease_ms + int((settled.retry_in or 0) * 1000)
            staged = [args for args, _ in tx.command_stack]
            commands = [("MULTI",), *staged]
            if settled.acked:
                commands.append(("XACK", self.log_key, self.route.name, *settled.acked))
            commands += [
                ("PEXPIRE", self.lease_key, hold),
                ("PEXPIRE", self.flag_key, max(hold, self.config.flag_ttl_ms)),
            ]
            if go_on:
                commands.append(self._read(token))
            replies = rt.send(*commands, ("EXEC",))
            results = replies[-1]
            moved = next((r for r in replies if isinstance(r, SLOT_MOVED)), None)
            if moved is not None:  # the slot left this master: EXEC refused the whole batch (EXECABORT)
                raise moved
            if results is None:  # the lease changed hands since the WATCH: nothing of this batch applied
                out.status = LOST
                return out
            if isinstance(results, Exception):  # EXECABORT: a command the effect queued was refused
                raise results
            self._check(results[: len(staged)], settled)
            for hook in hooks:
                hook(results)
            if settled.applied:
                self._observe(out, settled.applied, time.perf_counter() - started)
            out.acked += len(settled.acked)
            out.dead_lettered += settled.dead
            if not go_on:
                out.status, out.countdown = (
                    (RETRY, settled.retry_in or 0.0) if settled.retry_in is not None else (MORE, 0.0)
                )
                return out
            reply = results[-1]
            if isinstance(reply, Exception) or _text(reply[0]) not in (DONE, LOST):
                # entries are ours to apply next: the lease must still be ours when the next WATCH starts
                _, held = rt.send(("WATCH", self.lease_key), ("GET", self.lease_key))
                if held != token.encode():
                    out.status = LOST
                    return out
                if isinstance(reply, Exception):  # the script cache was lost mid-drain
                    reply = self._scripted(rt, NoScriptError(), token)

    def _observe(self, out: Outcome, applied: list[bytes], seconds: float) -> None:
        """Route latency (publish = the log id's time, to now) and, with metrics on, the batch's figures."""
        now_ms = time.time() * 1000
        published_ms = [int(i.partition(b"-")[0]) for i in applied]  # a log id's time (the bus client: bytes)
        out.applied += len(applied)
        out.latency_ms += max(0, int(len(applied) * now_ms - sum(published_ms)))
        recorder = metrics.RECORDER
        if recorder is not None:
            recorder.record_batch(self.route.name, len(applied), seconds)
            recorder.record_latency(self.route.name, [max(0.0, now_ms - t) / 1000 for t in published_ms])

    def _settle(self, tx: Any, raw: list[Any], deliveries: int, hooks: list[Any]) -> _Settled:
        settled, matching = _Settled(), []
        tracer = tracing.active_tracer()
        traced: list[Any] = []  # with a tracer: the matching entries' trace contexts (the batch span's links)
        for raw_id, raw_fields in raw:
            log_id = _text(raw_id)
            if not raw_fields:
                self._dead(tx, settled, raw_id, "", "trimmed from the log before the route acknowledged it")
                continue
            fields = dict(zip(raw_fields[::2], raw_fields[1::2], strict=True))
            payload = fields.get(b"event", b"")
            try:
                event = TradeEvent.from_json(payload)
            except (EventValidationError, ValueError, TypeError) as e:
                self._dead(tx, settled, raw_id, payload, f"unreadable log entry: {e}")
                continue
            if not self.route.matches(event.event_type.value, event.symbol):
                settled.acked.append(raw_id)  # not this route's: settled with nothing to do
                continue
            matching.append((raw_id, LogEntry(log_id, event, payload)))
            if tracer is not None:
                traced.append(entry_traceparent(fields))
        # Handed out this often and never acknowledged: it kills its drainer. (A drainer that died, or a batch
        # whose effect failed, leaves its whole batch to be handed out once more, one entry at a time.)
        cap = max(self.route.retry.max_retries + 1, 2)
        if deliveries > cap and matching:
            (raw_id, entry), matching = matching[0], []
            self._dead(tx, settled, raw_id, entry.payload, f"delivered {deliveries} times, never acknowledged")
        if not matching:
            return settled
        mark = len(tx.command_stack)
        batch = Batch(self.route, self.symbol, [e for _, e in matching], self.client, self.keys, tx,
                      self.context, self.publisher)  # fmt: skip
        span = tracing.NOTHING if tracer is None else tracing.batch_span(tracer, self.route.name, self.symbol, traced)
        try:
            with span:
                self.effect(batch)
        except Exception as exc:  # noqa: BLE001 - an effect's failure is retried or dead-lettered
            del tx.command_stack[mark:]
            return self._failed(tx, settled, matching, max(deliveries, 1), exc)
        hooks.extend(batch.hooks)
        settled.acked.extend(raw_id for raw_id, _ in matching)
        settled.applied = [raw_id for raw_id, _ in matching]
        return settled

    def _failed(self, tx: Any, settled: _Settled, matching: list[Any], attempt: int, exc: Exception) -> _Settled:
        if len(matching) > 1:
            log.warning("%s/%s: effect failed on a batch of %d (%s); isolating the entry one at a time",
                        self.route.name, self.symbol, len(matching), _reason(exc))  # fmt: skip
            return _Settled(isolate=True)
        raw_id, entry = matching[0]
        retryable = getattr(exc, "retryable", True) is not False and not isinstance(exc, EventValidationError)
        policy = self.route.retry
        if not retryable or attempt > policy.max_retries:
            why = _reason(exc) if retryable else f"not retryable: {_reason(exc)}"
            self._dead(tx, settled, raw_id, entry.payload, why, attempt)
            return settled
        settled.retry_in = policy.countdown(attempt - 1, _JITTER.random())
        log.warning("%s/%s: effect failed on %s (attempt %d, retry in %.2fs): %s", self.route.name, self.symbol,
                    entry.log_id, attempt, settled.retry_in, _reason(exc))  # fmt: skip
        return settled

    def _dead(self, tx: Any, settled: _Settled, raw_id: bytes, payload: Any, why: str, attempts: int = 1) -> None:
        """Dead-letter one entry with its log id, acknowledged in the same transaction."""
        log_id = _text(raw_id)
        dead_letter(tx, self.keys, event_json=payload or "", route=self.route.name, task=self.route.task,
                    attempts=attempts, reason=why, task_id=f"{self.symbol}@{log_id}", log_id=log_id,
                    symbol=self.symbol)  # fmt: skip
        settled.acked.append(raw_id)
        settled.dead += 1
        log.error("%s/%s: log entry %s dead-lettered: %s", self.route.name, self.symbol, log_id, why)

    def _skip_gap(self, tx: Any, reply: list[Any]) -> _Settled:
        """Entries trimmed before the group read them: one dead letter for the range, the group moved past it."""
        after, first, lost, entries_read = _text(reply[1]), _text(reply[2]), int(reply[3]), int(reply[4])
        ms, seq = parse_id(first)
        before = format_id((ms, seq - 1) if seq else (ms - 1, MAX_SEQ))
        why = f"{lost} log entries after {after} and before {first} were trimmed before the route read them"
        dead_letter(tx, self.keys, event_json="", route=self.route.name, task=self.route.task, attempts=0,
                    reason=why, task_id=f"{self.symbol}@{after}..{first}", log_id=f"{after}..{first}",
                    symbol=self.symbol)  # fmt: skip
        tx.execute_command("XGROUP", "SETID", self.log_key, self.route.name, before, "ENTRIESREAD", entries_read)
        log.error("%s/%s: %s (see `tradebus deadletters list`)", self.route.name, self.symbol, why)
        return _Settled(dead=1)

    def _check(self, results: list[Any], settled: _Settled) -> None:
        """A command that failed inside EXEC (Redis runs the rest): its entries are acknowledged without
        their full effect, so say so where operators look, never silently."""
        errors = [r for r in results if isinstance(r, Exception)]
        if not errors:
            return
        ids = [_text(i) for i in settled.acked]
        why = f"{len(errors)} command(s) of the batch failed inside its transaction: {errors[0]}"
        dead_letter(self.client, self.keys, event_json="", route=self.route.name, task=self.route.task,
                    attempts=1, reason=why, task_id=f"{self.symbol}@{ids[0] if ids else ''}",
                    log_id=f"{ids[0]}..{ids[-1]}" if ids else "", symbol=self.symbol)  # fmt: skip
        log.error("%s/%s: %s", self.route.name, self.symbol, why)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]
