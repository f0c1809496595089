"""Catch-up from the log: the entries a subscription missed, in order, once each (self-healing subscribers).

Written as steps (bus/core/steps.py): the log reads are ``Command`` requests and each recovered event
a ``Deliver`` request, so the blocking Subscriber and bus.aio's subscriber heal the same way.
"""

from __future__ import annotations

import logging
from typing import cast

from bus.core.keys import Keys
from bus.core.steps import Command, Deliver, Steps
from bus.core.subscription import Counters, Subscription
from bus.core.wire import TYPE_FIELD_B, Id, LogEntries, decode_entry, format_id, parse_id, text

log = logging.getLogger(__name__)
#: log entries fetched per XRANGE while catching up
RECOVER_BATCH = 1000


class CatchUp:
    """Reads what a subscription missed from the log and delivers each event."""

    def __init__(self, keys: Keys, counters: Counters) -> None:
        self._keys, self._counters = keys, counters

    def after_subscribe(self, sub: Subscription) -> Steps[None]:
        """After a (re)subscribe: deliver what the log holds past each symbol's last delivered id."""
        if sub.symbol is not None:
            symbols = {sub.symbol}
        else:
            members = yield Command(("SMEMBERS", self._keys.symbols()))
            symbols = {text(s) for s in members} | set(sub.last)
        for symbol in sorted(symbols):
            start = sub.last.get(symbol) or sub.baseline
            if start is not None:
                yield from self.fill_gap(sub, symbol, start, None)

    def fill_gap(self, sub: Subscription, symbol: str, last: Id, upto: str | None) -> Steps[None]:
        """Deliver the log entries of ``symbol`` after ``last`` (and before ``upto``) ``sub`` wants."""
        real = symbol in sub.last  # `last` is a delivered entry (not the baseline): it must still be there
        start, end = format_id(last) if real else f"({format_id(last)}", f"({upto}" if upto else "+"
        key, first = self._keys.log(symbol), True
        while True:
            entries = cast(LogEntries, (yield Command(("XRANGE", key, start, end, "COUNT", RECOVER_BATCH))))
            if first and real:
                if entries and parse_id(entries[0][0]) == last:
                    entries = entries[1:]
                else:
                    self._counters.gaps_lost += 1
                    log.error("log of %s no longer holds %s: events between it and the next entry are "
                              "lost for %s", symbol, format_id(last), sub.name)  # fmt: skip
            first = False
            for raw_id, fields in entries:
                if sub.event_type is not None and fields.get(TYPE_FIELD_B) != sub.event_type:
                    continue
                event = decode_entry(fields)
                if event is None:
                    self._counters.malformed += 1
                    continue
                yield Deliver(sub, event)
                self._counters.recovered_from_log += 1
                sub.last[symbol] = parse_id(raw_id)
            if len(entries) < RECOVER_BATCH - 1:
                return
            start = f"({entries[-1][0].decode()}"
