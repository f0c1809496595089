"""Catch-up from the log: the entries a subscription missed, in order, once each (self-healing subscribers).

Written as steps (bus/core/steps.py): the log reads are ``Command`` requests and each recovered event
a ``Deliver`` request, so the blocking Subscriber and bus.aio's subscriber heal the same way.

When the entries a subscription needs were trimmed (``TRADEBUS_LOG_MAXLEN``), the loss is reported
in full: how many (from the entries' numbers, ``n``), between which log ids, in an ERROR log, the
``events_lost`` counter and a ``LostEvents`` notice to the callbacks in ``lost_handlers``.
"""

from __future__ import annotations

import logging
from typing import cast

from bus.core.keys import Keys
from bus.core.steps import Command, Deliver, Steps
from bus.core.subscription import Counters, LostEvents, LostHandler, Subscription
from bus.core.wire import TYPE_FIELD_B, Id, LogEntries, decode_entry, entry_number, format_id, parse_id, text

log = logging.getLogger(__name__)
#: log entries fetched per XRANGE while catching up
RECOVER_BATCH = 1000


class CatchUp:
    """Reads what a subscription missed from the log and delivers each event."""

    def __init__(self, keys: Keys, counters: Counters) -> None:
        self._keys, self._counters = keys, counters
        self.lost_handlers: list[LostHandler] = []

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

    def fill_gap(self, sub: Subscription, symbol: str, last: Id, upto: str | None,
                 upto_number: int | None = None) -> Steps[None]:  # fmt: skip
        """Deliver the log entries of ``symbol`` after ``last`` (and before ``upto``, the broadcast whose
        entry number is ``upto_number``) that ``sub`` wants."""
        real = symbol in sub.last  # `last` is a delivered entry (not the baseline): it must still be there
        start, end = format_id(last) if real else f"({format_id(last)}", f"({upto}" if upto else "+"
        key, first = self._keys.log(symbol), True
        while True:
            entries = cast(LogEntries, (yield Command(("XRANGE", key, start, end, "COUNT", RECOVER_BATCH))))
            if first and real:
                if entries and parse_id(entries[0][0]) == last:
                    entries = entries[1:]
                elif symbol in sub.heard and (yield from self._never_logged(key, last)):
                    # the last delivery was a forged broadcast that chained (bus/core/healing.py): go on
                    # after the genuine predecessor it named
                    self.forged_last(sub, symbol)
                    prior = sub.heard.pop(symbol)[1]
                    sub.number.pop(symbol, None)
                    if prior is None:
                        del sub.last[symbol]
                    else:
                        sub.last[symbol] = prior
                    yield from self.fill_gap(sub, symbol, prior or sub.baseline or last, upto, upto_number)
                    return
                else:
                    first_id = text(entries[0][0]) if entries else upto
                    first_n = entry_number(entries[0][1]) if entries else upto_number
                    self._lost(sub, symbol, last, first_id, first_n)
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
                sub.heard.pop(symbol, None)
                n = entry_number(fields)
                if n is None:
                    sub.number.pop(symbol, None)
                else:
                    sub.number[symbol] = n
            if len(entries) < RECOVER_BATCH - 1:
                return
            start = f"({entries[-1][0].decode()}"

    def forged_last(self, sub: Subscription, symbol: str) -> None:
        """Count and log that the last delivery of ``sub`` for ``symbol`` was a broadcast the log never held."""
        self._counters.forged += 1
        log.error("the broadcast delivered last on %s for %s (log id %s) is not in the log: forged, corrupt, or "
                  "lost in a failover; delivery resumes from the log", sub.name, symbol,
                  format_id(sub.last[symbol]))  # fmt: skip

    def _never_logged(self, key: str, missing: Id) -> Steps[bool]:
        """Whether the log, lacking ``missing``, still holds an older entry: then it was never there
        (a log loses its oldest entries only); else it was trimmed."""
        older = yield Command(("XREVRANGE", key, f"({format_id(missing)}", "-", "COUNT", 1))
        return bool(older)

    def _lost(self, sub: Subscription, symbol: str, last: Id, first_id: str | None, first_n: int | None) -> None:
        """Report the entries trimmed between ``last`` (delivered) and ``first_id`` (the first still there)."""
        last_n = sub.number.get(symbol)
        count = first_n - last_n - 1 if first_n is not None and last_n is not None else None
        if count is not None and count < 0:  # numbered by another scheme meanwhile (heads reset): unknown
            count = None
        notice = LostEvents(sub.name, symbol, format_id(last), first_id, count)
        self._counters.gaps_lost += 1
        self._counters.events_lost += count or 0
        log.error(
            "events lost for %s: %s events of %s after log id %s and before %s were trimmed from the log "
            "(TRADEBUS_LOG_MAXLEN) before this subscriber read them",
            sub.name, "unknown number of" if count is None else count, symbol, notice.after,
            first_id or "the log's end",
        )  # fmt: skip
        for handler in self.lost_handlers:
            try:
                handler(notice)
            except Exception:  # noqa: BLE001 - a bad callback must not stop the loop
                self._counters.handler_errors += 1
                log.exception("lost-events callback %r failed on %s", handler, notice)
