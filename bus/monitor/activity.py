"""Events per type since the previous poll, read from the symbols' logs (what ``tradebus top`` rates)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import redis

from bus.core.keys import Keys

#: log entries read per symbol and poll; a busier symbol's rate is capped at this many per interval
MAX_ENTRIES_PER_POLL = 10_000


@dataclass(frozen=True)
class Activity:
    seconds: float  # since the previous poll
    by_type: dict[str, int]  # event type -> events logged in that time

    def per_second(self) -> dict[str, float]:
        return {t: n / self.seconds for t, n in self.by_type.items()} if self.seconds > 0 else {}


class ActivityReader:
    """``poll()`` returns the events logged since the previous poll (the first poll starts the clock)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client, self.keys = client, keys
        self._last: dict[str, str] = {}  # symbol -> last log id seen
        self._at = time.monotonic()

    def poll(self) -> Activity:
        symbols = sorted(_s(s) for s in self.client.smembers(self.keys.symbols()))
        pipe = self.client.pipeline(transaction=False)
        for sym in symbols:
            if sym in self._last:
                pipe.xrange(self.keys.log(sym), f"({self._last[sym]}", "+", count=MAX_ENTRIES_PER_POLL)
            else:  # a symbol seen for the first time: start from its newest entry
                pipe.xrevrange(self.keys.log(sym), "+", "-", count=1)
        replies = pipe.execute()
        now = time.monotonic()
        by_type: Counter[str] = Counter()
        for sym, entries in zip(symbols, replies, strict=True):
            first_sight = sym not in self._last
            if entries:
                self._last[sym] = _s(entries[-1][0] if not first_sight else entries[0][0])
            elif first_sight:
                self._last[sym] = "0-0"
            if not first_sight:
                by_type.update(_s(fields.get(b"type", b"?")) for _, fields in entries)
        seconds, self._at = now - self._at, now
        return Activity(seconds, dict(by_type))


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
