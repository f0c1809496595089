"""Catch-up from the log for a Subscriber: the entries a subscription missed, in order, once each."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

from bus.core.wire import Id, LogEntries, decode_entry, format_id, parse_id

if TYPE_CHECKING:
    from bus.core.subscriber import Subscriber, _Sub

log = logging.getLogger(__name__)
#: log entries fetched per XRANGE while catching up
RECOVER_BATCH = 1000


def catch_up(subscriber: Subscriber, sub: _Sub) -> None:
    """After a (re)subscribe: deliver what the log holds past each symbol's last delivered id."""
    if sub.symbol is not None:
        symbols = {sub.symbol}
    else:
        symbols = {s.decode() for s in subscriber._client.smembers(subscriber._keys.symbols())}  # type: ignore[union-attr]
        symbols |= set(sub.last)
    for symbol in sorted(symbols):
        start = sub.last.get(symbol) or sub.baseline
        if start is not None:
            recover(subscriber, sub, symbol, start, None)


def recover(subscriber: Subscriber, sub: _Sub, symbol: str, last: Id, upto: str | None) -> None:
    """Deliver the log entries of ``symbol`` after ``last`` (and before ``upto``) this sub wants."""
    real = symbol in sub.last  # `last` is a delivered entry (not the baseline): it must still be there
    start, end = format_id(last) if real else f"({format_id(last)}", f"({upto}" if upto else "+"
    key, first = subscriber._keys.log(symbol), True
    while True:
        entries = cast(LogEntries, subscriber._client.xrange(key, start, end, count=RECOVER_BATCH))
        if first and real:
            if entries and parse_id(entries[0][0]) == last:
                entries = entries[1:]
            else:
                subscriber.counters.gaps_lost += 1
                log.error("log of %s no longer holds %s: events between it and the next entry are "
                          "lost for %s", symbol, format_id(last), sub.name)  # fmt: skip
        first = False
        for raw_id, fields in entries:
            if sub.type_b is not None and fields.get(b"type") != sub.type_b:
                continue
            event = decode_entry(fields)
            if event is None:
                subscriber.counters.malformed += 1
                continue
            subscriber._deliver(sub, event)
            subscriber.counters.recovered_from_log += 1
            sub.last[symbol] = parse_id(raw_id)
        if len(entries) < RECOVER_BATCH - 1:
            return
        start = f"({entries[-1][0].decode()}"
