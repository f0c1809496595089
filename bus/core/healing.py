"""The I/O-free core of a self-healing subscriber, shared by the blocking Subscriber and bus.aio's.

It decides, per broadcast and subscription, what to deliver (self-healing subscribers, bad input):

* a message that is not a JSON object, or not a valid event, is malformed: counted, logged, skipped;
* a message without ``log_id`` was published by another tool: validated in full and delivered;
* a broadcast of another key prefix (another tenant) is foreign: counted and ignored;
* a broadcast whose log id the subscription already delivered (from the log) is dropped;
* a broadcast whose ``prev`` (``prev_t`` for a one-type subscription) is newer than the last id
  delivered for its symbol reveals a gap: the missing entries are read from the log and delivered
  first (``CatchUp``), in order, once each.

The drivers own the connection: they read replies, call ``arrival`` and ``steps`` here, deliver,
then ``delivered``. Log reads are steps (bus/core/steps.py) each driver runs on its own client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import orjson
import redis

from bus.core.catchup import CatchUp
from bus.core.keys import Keys
from bus.core.steps import Command, Steps
from bus.core.subscription import Counters, Subscription
from bus.core.wire import MAX_SEQ, TRACE_FIELD, Id, parse_id
from bus.errors import BusPermissionError, EventValidationError
from bus.events.model import TradeEvent
from bus.observability import tracing

log = logging.getLogger(__name__)


class Arrival(NamedTuple):
    """A broadcast to deliver to one subscription."""

    event: TradeEvent
    log_id: Id | None  # None: another tool's message, outside the log
    raw_id: str  # the log id as published ("" for another tool's message)
    gap_after: Id | None  # deliver the log entries after this id (and before this one) first


class Healer:
    """Decisions and log reads of one subscriber's subscriptions (see the module docstring)."""

    def __init__(self, keys: Keys, counters: Counters) -> None:
        self._prefix = keys.prefix
        self.counters = counters
        self.catch_up = CatchUp(keys, counters)

    def arrival(self, sub: Subscription, data: bytes) -> Arrival | None:
        """What the broadcast ``data`` on ``sub`` means: an Arrival to deliver, or None to skip."""
        try:
            obj = orjson.loads(data)
            if type(obj) is not dict:
                raise EventValidationError("a broadcast must be a JSON object", field="json")
            log_id = obj.pop("log_id", None)
            if log_id is None:  # published by another tool: validate everything
                return Arrival(TradeEvent.from_dict(obj), None, "", None)
            prev, prev_t, bus = obj.pop("prev", ""), obj.pop("prev_t", ""), obj.pop("bus", None)
            traced = obj.pop(TRACE_FIELD, None)  # the publish's trace context, when it was traced
            if bus != self._prefix:
                self.counters.foreign += 1
                return None
            event = TradeEvent.from_trusted_dict(obj)
            if traced is not None:
                tracing.carry(event, traced)
            lid = parse_id(log_id)
        except (orjson.JSONDecodeError, EventValidationError, ValueError, TypeError) as e:
            self.counters.malformed += 1
            log.warning("malformed message on %s skipped: %s", sub.name, e)
            return None
        gap_after = None
        last = sub.last.get(event.symbol) or sub.baseline
        if last is not None:
            if lid <= last:
                return None  # already delivered (from the log)
            before = prev_t if sub.event_type else prev
            if before and parse_id(before) > last:
                gap_after = last
        return Arrival(event, lid, log_id, gap_after)

    def fill_gap(self, sub: Subscription, arrival: Arrival) -> Steps[None]:
        """Deliver what ``sub`` missed before ``arrival`` (its ``gap_after`` is set)."""
        assert arrival.gap_after is not None
        yield from self.catch_up.fill_gap(sub, arrival.event.symbol, arrival.gap_after, arrival.raw_id)

    @staticmethod
    def delivered(sub: Subscription, arrival: Arrival) -> None:
        """Record that ``arrival`` reached ``sub``'s consumer (later copies of it are dropped)."""
        if arrival.log_id is not None:
            sub.last[arrival.event.symbol] = arrival.log_id

    def baseline(self, subs: Iterable[Subscription]) -> Steps[None]:
        """Give new subscriptions their baseline: just before now on the server's clock (the log ids'
        clock), so catch-up after a reconnect starts where the subscription started."""
        new = [s for s in subs if s.baseline is None]
        if new:
            secs, micros = yield Command(("TIME",))
            base = (int(secs) * 1000 + int(micros) // 1000 - 1, MAX_SEQ)
            for s in new:
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


def message_of(subs: Mapping[bytes, Subscription], reply: Any) -> tuple[Subscription, bytes] | None:
    """The subscription a pub/sub reply is for and its data; None for anything else (pong, confirmations)."""
    kind = reply[0]
    if kind == b"pmessage":
        sub = subs.get(reply[1])
        return (sub, reply[3]) if sub is not None else None
    if kind == b"message":
        sub = subs.get(reply[1])
        return (sub, reply[2]) if sub is not None else None
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
