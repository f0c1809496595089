"""The I/O-free core of a self-healing subscriber, shared by the blocking Subscriber and bus.aio's.

It decides, per broadcast and subscription, what to deliver (self-healing subscribers, bad input):

* a message that is not a JSON object, or not a valid event, is malformed: counted, logged, skipped;
  so is a broadcast whose meta fields (``log_id``, ``n``, ``prev``, ``prev_t``, ``bus``) are of the
  wrong type, syntax or size, or whose event is not of the channel it came on;
* a message without ``log_id`` was published by another tool: validated in full and delivered;
* a broadcast of another key prefix (another tenant) is foreign: counted and ignored;
* a broadcast whose log id the subscription already delivered (from the log) is dropped;
* a broadcast whose ``prev`` (``prev_t`` for a one-type subscription) is newer than the last id
  delivered for its symbol reveals a gap: the missing entries are read from the log and delivered
  first (``CatchUp``), in order, once each.

Forged or corrupt log ids (anyone allowed to PUBLISH on ``trades:*`` can send one) cost at most the
forged message itself, never a real event. A genuine broadcast chains: its ``prev`` is the id this
subscription delivered last, its id is later and not ahead of the server's clock. Such a broadcast is
delivered at no extra cost. Any other one is suspect and checked against the log before it is
delivered (``settle``): the entry at its id must be this very event, else it is dropped and counted
as ``forged``. A genuine broadcast that contradicts the last delivery (its id is not after it, or its
``prev`` does not name it) means that delivery was a forgery that had chained: the log is asked about
it, and delivery resumes from the genuine predecessor the broadcast names. So a forged id ahead of
the real ones no longer mutes the subscription: the next real event is checked, delivered and
resets the chain.

The drivers own the connection: they read replies, call ``arrival`` (and ``settle`` when the arrival
is ``slow``) here, deliver, then ``delivered``. Log reads are steps (bus/core/steps.py) each driver
runs on its own client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import orjson
import redis

from bus.core.catchup import CatchUp
from bus.core.keys import Keys
from bus.core.steps import Command, Steps
from bus.core.subscription import Counters, Subscription
from bus.core.wire import (
    MAX_SEQ,
    TRACE_FIELD,
    Id,
    LogEntries,
    checked_id,
    checked_number,
    checked_prev,
    decode_entry,
    format_id,
)
from bus.errors import BusPermissionError, EventValidationError
from bus.events.model import TradeEvent
from bus.observability import tracing

log = logging.getLogger(__name__)

#: ms a broadcast's log id may lie ahead of the server clock (as last read, plus elapsed time) before
#: it is checked against the log: covers the TIME round trip and clock drift between two reads
FUTURE_SLACK_MS = 1000

# why a broadcast is checked against the log before delivery ("" : it chains, deliver it)
GAP = "gap"  # its prev is newer than the last delivery: fill from the log, then check it
BEHIND = "behind"  # its id is not after the last delivery, which came from an unconfirmed broadcast
UNCHAINED = "unchained"  # its prev is older than the last delivery (or names none)
FUTURE = "future"  # its id lies ahead of the server clock


class Arrival(NamedTuple):
    """A broadcast to deliver to one subscription."""

    event: TradeEvent
    log_id: Id | None  # None: another tool's message, outside the log
    raw_id: str  # the log id as published ("" for another tool's message)
    gap_after: Id | None  # deliver the log entries after this id (and before this one) first
    before: Id | None = None  # the prev / prev_t the broadcast names (the subscription's own chain)
    number: int | None = None  # its entry's number in the symbol's log (``n``)
    suspect: str = ""  # why it must be checked against the log first (GAP, BEHIND...); "" to deliver now


class Healer:
    """Decisions and log reads of one subscriber's subscriptions (see the module docstring)."""

    def __init__(self, keys: Keys, counters: Counters) -> None:
        self._prefix, self._keys = keys.prefix, keys
        # the channels are shared by every key prefix (tenant): a `trades:*` subscriber receives them all.
        # Broadcasts of another prefix are told apart without parsing them (they can be most of the traffic)
        self._ours = orjson.dumps({"bus": keys.prefix})[1:-1]  # b'"bus":"<prefix>"'
        self._window = 200 + len(self._ours)  # publish.lua writes `bus` after log_id, n, prev, prev_t
        self.counters = counters
        self.catch_up = CatchUp(keys, counters)
        #: (server ms, time.monotonic()) when the server clock was last read; None before
        self._clock: tuple[int, float] | None = None
        self._horizon = 0  # server ms a log id may reach before _ahead reads the clock estimate again
        self._channels: dict[bytes, list[str]] = {}  # channel -> [symbol, type value] it names

    def arrival(self, sub: Subscription, chan: bytes, data: bytes) -> Arrival | None:
        """What the broadcast ``data`` on channel ``chan`` of ``sub`` means: an Arrival to deliver, or
        None to skip."""
        if data.startswith(b'{"log_id":"') and data.find(self._ours, 0, self._window) < 0:
            self.counters.foreign += 1  # another prefix's broadcast (or a corrupt one: nothing of ours)
            return None
        try:
            obj = orjson.loads(data)
            if type(obj) is not dict:
                raise EventValidationError("a broadcast must be a JSON object", field="json")
            log_id = obj.pop("log_id", None)
            if log_id is None:  # published by another tool: validate everything
                return self._of_channel(sub, chan, Arrival(TradeEvent.from_dict(obj), None, "", None))
            number, prev, prev_t = obj.pop("n", None), obj.pop("prev", ""), obj.pop("prev_t", "")
            bus = obj.pop("bus", None)
            traced = obj.pop(TRACE_FIELD, None)  # the publish's trace context, when it was traced
            if bus != self._prefix:
                if type(bus) is not str:
                    raise EventValidationError(f"bus is not a key prefix: {type(bus).__name__}", field="bus")
                self.counters.foreign += 1
                return None
            lid = checked_id(log_id, "log_id")
            prev_id, prev_t_id = checked_prev(prev, "prev"), checked_prev(prev_t, "prev_t")
            n = checked_number(number)
            event = TradeEvent.from_trusted_dict(obj)
            if not self._fits(chan, event):
                raise EventValidationError(f"a {event.event_type.value} event of {event.symbol}", field="channel")
            if traced is not None:
                tracing.carry(event, traced)
        except (orjson.JSONDecodeError, EventValidationError, ValueError, TypeError) as e:
            self.counters.malformed += 1
            log.warning("malformed message on %s skipped: %s", sub.name, e)
            return None
        return self._place(sub, event, lid, log_id, prev_t_id if sub.event_type else prev_id, n)

    def _fits(self, chan: bytes, event: TradeEvent) -> bool:
        """Whether ``event`` is of the channel it came on (symbol and type)."""
        named = self._channels.get(chan)
        if named is None:
            named = chan.decode(errors="replace").split(":", 2)[1:]
            if len(self._channels) < 10_000:  # bounded: channels are few; past that, parse each time
                self._channels[chan] = named
        return named == [event.symbol, event.event_type.value]

    def _of_channel(self, sub: Subscription, chan: bytes, arrival: Arrival) -> Arrival | None:
        """``arrival`` (another tool's message) if its event is of the channel it came on, else malformed."""
        event = arrival.event
        if self._fits(chan, event):
            return arrival
        self.counters.malformed += 1
        log.warning("malformed message on %s skipped: a %s event of %s", chan, event.event_type.value, event.symbol)
        return None

    def _place(self, sub: Subscription, event: TradeEvent, lid: Id, raw_id: str, before: Id | None,
               n: int | None) -> Arrival | None:  # fmt: skip
        """Where a broadcast of the log stands in ``sub``'s chain for its symbol (see the module doc)."""
        last = sub.last.get(event.symbol)
        if last is None:  # nothing delivered yet: the subscription's start is the baseline
            base = sub.baseline
            if base is not None and lid <= base:
                return None  # logged before the subscription was made
            if base is not None and before is not None and before > base:
                return Arrival(event, lid, raw_id, base, before, n, GAP)
            return Arrival(event, lid, raw_id, None, before, n, FUTURE if self._ahead(lid) else "")
        if lid <= last:
            heard = sub.heard.get(event.symbol)
            if heard is None or (lid == last and heard[0] == event.event_id):
                return None  # already delivered (from the log, or this very broadcast again)
            return Arrival(event, lid, raw_id, None, before, n, BEHIND)
        if before is not None and before > last:
            return Arrival(event, lid, raw_id, last, before, n, GAP)
        if before != last:
            return Arrival(event, lid, raw_id, None, before, n, UNCHAINED)
        return Arrival(event, lid, raw_id, None, before, n, FUTURE if self._ahead(lid) else "")

    def _ahead(self, lid: Id) -> bool:
        if lid[0] <= self._horizon:  # not past the clock as last estimated: no clock read per broadcast
            return False
        clock = self._clock
        if clock is None:
            return False
        self._horizon = int(clock[0] + (time.monotonic() - clock[1]) * 1000) + FUTURE_SLACK_MS
        return lid[0] > self._horizon

    def settle(self, sub: Subscription, arrival: Arrival) -> Steps[bool]:
        """The slow path of a ``suspect`` arrival: fill its gap from the log first, check it against
        the log, undo a forged delivery it reveals. True: deliver it; False: it was dropped (counted)."""
        symbol = arrival.event.symbol
        if arrival.gap_after is not None:
            yield from self.catch_up.fill_gap(sub, symbol, arrival.gap_after, arrival.raw_id, arrival.number)
        if not (yield from self._logged(symbol, arrival.raw_id, arrival.event)):
            return self._forged(sub, arrival, "the log holds no such event at that id")
        if arrival.suspect == FUTURE:  # genuine: the clock reading is stale (or the server's clock jumped)
            yield from self.sync_clock()
        if arrival.suspect not in (BEHIND, UNCHAINED):
            return True
        heard = sub.heard.get(symbol)
        if heard is None or (yield from self._logged(symbol, format_id(sub.last[symbol]), heard[0])):
            # the last delivery is genuine too: an older genuine broadcast sent again, or (its prev
            # naming an older id) heads reset under the log: new and genuine, deliver it
            return arrival.suspect == UNCHAINED or self._forged(sub, arrival, "a replay of an earlier broadcast")
        # the last delivery was forged (it chained): resume after the genuine predecessor this
        # broadcast names; every genuine event up to it came in order on this connection
        self.catch_up.forged_last(sub, symbol)
        self.rewind(sub, symbol, arrival.before)
        return True

    def _logged(self, symbol: str, raw_id: str, event: TradeEvent | str) -> Steps[bool]:
        """Whether the log entry at ``raw_id`` is ``event`` (in full) or has ``event`` as its event id."""
        entries: LogEntries = yield Command(("XRANGE", self._keys.log(symbol), raw_id, raw_id))
        found = decode_entry(entries[0][1]) if entries else None
        if found is None:
            return False
        return found == event if isinstance(event, TradeEvent) else found.event_id == event

    def _forged(self, sub: Subscription, arrival: Arrival, why: str) -> bool:
        self.counters.forged += 1
        log.warning("broadcast on %s with log id %s skipped: %s (forged or corrupt)", sub.name, arrival.raw_id, why)
        return False

    @staticmethod
    def rewind(sub: Subscription, symbol: str, to: Id | None) -> None:
        """Make ``to`` the last delivery of ``sub`` for ``symbol`` (None: back to its baseline)."""
        sub.heard.pop(symbol, None)
        sub.number.pop(symbol, None)
        if to is None:
            sub.last.pop(symbol, None)
        else:
            sub.last[symbol] = to

    @staticmethod
    def delivered(sub: Subscription, arrival: Arrival) -> None:
        """Record that ``arrival`` reached ``sub``'s consumer (later copies of it are dropped)."""
        if arrival.log_id is not None:
            symbol = arrival.event.symbol
            sub.last[symbol] = arrival.log_id
            if arrival.suspect:  # checked against the log
                sub.heard.pop(symbol, None)
            else:
                sub.heard[symbol] = (arrival.event.event_id, arrival.before)
            if arrival.number is not None:
                sub.number[symbol] = arrival.number

    def sync_clock(self) -> Steps[None]:
        secs, micros = yield Command(("TIME",))
        self._clock = (int(secs) * 1000 + int(micros) // 1000, time.monotonic())
        self._horizon = self._clock[0] + FUTURE_SLACK_MS

    def baseline(self, subs: Iterable[Subscription]) -> Steps[None]:
        """Read the server's clock (the log ids' clock) and give new subscriptions their baseline: just
        before now, so catch-up after a reconnect starts where the subscription started."""
        subs = list(subs)
        if not subs:
            return
        yield from self.sync_clock()
        assert self._clock is not None
        base = (self._clock[0] - 1, MAX_SEQ)
        for s in subs:
            if s.baseline is None:
                s.baseline = base


class Liveness:
    """Health check of an idle subscriber connection: PING it after ``interval`` seconds of silence;
    no answer within ``timeout`` means it is dead (half-open sockets send nothing and raise nothing)."""

    def __init__(self, interval: float, timeout: float, now: float) -> None:
        self.interval, self.timeout = interval or 15, timeout
        self.last_rx, self.ping_sent = now, 0.0

    def heard(self, now: float) -> None:
        self.last_rx, self.ping_sent = now, 0.0

    def ping_due(self, now: float) -> bool:
        """Called while idle: True when a PING should be sent now; redis.TimeoutError when one went unanswered."""
        if self.ping_sent:
            if now - self.ping_sent > self.timeout:
                raise redis.TimeoutError("subscriber connection did not answer PING")
            return False
        if now - self.last_rx > self.interval:
            self.ping_sent = now
            return True
        return False


def subscribe_commands(subs: Iterable[Subscription]) -> list[tuple[str, ...]]:
    """SUBSCRIBE for the channels, PSUBSCRIBE for the patterns (each expects one confirmation per name)."""
    subs = list(subs)
    channels = [s.name for s in subs if not s.pattern]
    patterns = [s.name for s in subs if s.pattern]
    return [(cmd, *names) for cmd, names in (("SUBSCRIBE", channels), ("PSUBSCRIBE", patterns)) if names]


def is_confirmation(reply: Any) -> bool:
    return reply[0] in (b"subscribe", b"psubscribe")


def message_of(subs: Mapping[bytes, Subscription], reply: Any) -> tuple[Subscription, bytes, bytes] | None:
    """The subscription a pub/sub reply is for, its channel and its data; None for anything else (pong,
    confirmations)."""
    kind = reply[0]
    if kind == b"pmessage":
        sub = subs.get(reply[1])
        return (sub, reply[2], reply[3]) if sub is not None else None
    if kind == b"message":
        sub = subs.get(reply[1])
        return (sub, reply[1], reply[2]) if sub is not None else None
    return None


def permission_error(e: Exception, user: str | None, subs: Iterable[Subscription], prefix: str) -> BusPermissionError:
    """Redis refused a subscriber a channel or key (ACL): permanent, so it stops, saying what to grant."""
    names = sorted((s.pattern, s.name) for s in subs)
    channels = [n for p, n in names if not p]
    patterns = [n for p, n in names if p]
    return BusPermissionError(
        f"Redis refused the subscriber of ACL user {user or 'default'!r} ({e}); the listener stopped. It "
        f"subscribes to channels {channels} and patterns {patterns}: grant the user &trades:* "
        "(a pattern subscription needs its exact pattern granted, e.g. &trades:XAUUSD:*, or "
        f"allchannels) and read access to ~{prefix}:*"
    )
