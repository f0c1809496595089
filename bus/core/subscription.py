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
    handler_errors: int = 0  # handler calls that raised
    malformed: int = 0  # messages / log entries that were not a valid event
    recovered_from_log: int = 0  # events delivered from the log after a gap or reconnect
    gaps_lost: int = 0  # gaps the log could no longer cover (trimmed past the last delivered id)
    reconnects: int = 0
    foreign: int = 0  # broadcasts of another key prefix, ignored

    def __post_init__(self) -> None:
        metrics.track_subscriber(self)  # read when /metrics is scraped; nothing more per delivery

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


class Subscription:
    """One Redis subscription (a channel or a pattern): its handlers and, per symbol, the last log id
    delivered to them. ``symbol`` / ``event_type`` are None when the subscription spans every one."""

    __slots__ = ("name", "pattern", "symbol", "event_type", "handlers", "last", "baseline")

    def __init__(self, name: str, pattern: bool, symbol: str | None, type_value: str | None) -> None:
        self.name, self.pattern, self.symbol = name, pattern, symbol
        #: the type value as the log entries' type field holds it (bytes), to filter them while catching up
        self.event_type = type_value.encode() if type_value else None
        self.handlers: list[Handler] = []
        self.last: dict[str, Id] = {}  # symbol -> last delivered log id
        self.baseline: Id | None = None  # just before the subscription was first made
