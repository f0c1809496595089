"""What a Subscriber keeps: one record per Redis subscription, and the counters it reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bus.core.wire import Id
from bus.events.model import TradeEvent
from bus.observability import metrics

Handler = Callable[[TradeEvent], Any]


@dataclass
class Counters:
    delivered: int = 0  # handler calls that returned
    handler_errors: int = 0  # handler (and lost-events callback) calls that raised
    malformed: int = 0  # messages / log entries that were not a valid event
    recovered_from_log: int = 0  # events delivered from the log after a gap or reconnect
    gaps_lost: int = 0  # gaps the log could no longer cover (trimmed past the last delivered id)
    events_lost: int = 0  # events in those gaps, when the log's entry numbers tell how many
    reconnects: int = 0
    foreign: int = 0  # broadcasts of another key prefix, ignored
    forged: int = 0  # broadcasts the log contradicted (forged, corrupt or replayed), not delivered or undone
    loop_errors: int = 0  # unexpected errors inside the loop: logged, then reconnect and heal from the log

    def __post_init__(self) -> None:
        metrics.track_subscriber(self)  # read when /metrics is scraped; nothing more per delivery

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class LostEvents:
    """Events of ``symbol`` that were trimmed from the log (``TRADEBUS_LOG_MAXLEN``) before this
    subscription could read them: every entry after log id ``after`` (the last one delivered) and
    before ``before`` (the first one still there, or the broadcast that revealed the gap).

    ``count`` is exact, but of the symbol's events of every type (a one-type subscription lost at most
    that many of its own); None when the entries carry no number (logged by an older tradebus)."""

    subscription: str
    symbol: str
    after: str
    before: str | None
    count: int | None


LostHandler = Callable[[LostEvents], Any]


class Subscription:
    """One Redis subscription (a channel or a pattern): its handlers and, per symbol, the last log id
    delivered to them. ``symbol`` / ``event_type`` are None when the subscription spans every one."""

    __slots__ = (
        "name", "pattern", "symbol", "type_value", "event_type", "handlers", "last", "heard", "number", "baseline",
    )  # fmt: skip

    def __init__(self, name: str, pattern: bool, symbol: str | None, type_value: str | None) -> None:
        self.name, self.pattern, self.symbol, self.type_value = name, pattern, symbol, type_value
        #: the type value as the log entries' type field holds it (bytes), to filter them while catching up
        self.event_type = type_value.encode() if type_value else None
        self.handlers: list[Handler] = []
        self.last: dict[str, Id] = {}  # symbol -> last delivered log id
        #: symbol -> (event id, prev) of the last delivery when it came from a broadcast the log has not
        #: confirmed (a forgery is possible: bus/core/healing.py); absent when it came from the log
        self.heard: dict[str, tuple[str, Id | None]] = {}
        self.number: dict[str, int] = {}  # symbol -> entry number of the last delivery, when known
        self.baseline: Id | None = None  # just before the subscription was first made
