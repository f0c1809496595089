"""Re-dispatch: the tasks of logged events sent again, from the log itself (at-least-once tasks).

Beat's ``redispatch`` job (``Dispatcher.redispatch_missed``) re-sends the events whose publish left a
pending-dispatch entry (``Keys.pending_dispatch_for``: a separate broker that was down, a task message the
broker refused) once it is older than the grace period; ``tradebus replay`` re-sends a range of the log
(``Dispatcher.redispatch_range``). Task ids are ``{event_id}:{route}``, so a resend is recognisable downstream
and applied once (effectively-once effects).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, cast

import redis

from bus.core.dispatching import RouteNames
from bus.core.keys import Keys
from bus.core.wire import entry_event, entry_payload, text
from bus.events.model import TradeEvent

log = logging.getLogger(__name__)

#: one logged event and its routes, as ``send_many`` takes them
Item = tuple[TradeEvent, "bytes | str", Sequence[Any]]


class Dispatcher(Protocol):
    """What re-dispatch needs of bus.dispatch.dispatcher.Dispatcher."""

    def bus(self) -> tuple[redis.Redis, Keys]: ...

    def routes_for(self, event: TradeEvent) -> Sequence[Any]: ...

    def retry_broker_now(self) -> None: ...

    def send_many(
        self, items: Sequence[Item], log_ids: Sequence[str | None] | None = None, *, strict: bool | None = None
    ) -> list[RouteNames]: ...


#: pending entries handled per symbol per redispatch pass
REDISPATCH_BATCH = 500
# XRANGE of a log: [(log id, fields)], bytes or str as the attached client decodes
Entries = list[tuple[bytes | str, dict[Any, Any]]]


def missed(dispatcher: Dispatcher, grace_seconds: float) -> int:
    """Re-dispatch logged events whose dispatch is not recorded after ``grace_seconds`` (the server's clock,
    as the entries' scores); the number enqueued. Raises DispatchError if the broker is still down."""
    client, keys = dispatcher.bus()
    secs, micros = client.time()
    cutoff = int(secs) * 1000 + int(micros) // 1000 - int(grace_seconds * 1000)
    total = 0
    for raw_symbol in client.smembers(keys.symbols()):
        symbol = text(raw_symbol)
        key = keys.pending_dispatch_for(symbol)
        while True:
            members = client.zrangebyscore(key, "-inf", cutoff, start=0, num=REDISPATCH_BATCH)
            ids = [text(m) for m in cast("list[bytes | str]", members)]  # no scores asked for: members only
            if not ids:
                break
            total += _resend(dispatcher, symbol, ids)
            if len(ids) < REDISPATCH_BATCH:
                break
    return total


def log_range(dispatcher: Dispatcher, symbol: str, start: str, end: str, count: int | None) -> int:
    """Re-dispatch every logged event of ``symbol`` between two log ids (CLI replay)."""
    client, keys = dispatcher.bus()
    entries = cast(Entries, client.xrange(keys.log(symbol), start, end, count=count))
    return _send_entries(dispatcher, entries)


def _resend(dispatcher: Dispatcher, symbol: str, log_ids: list[str]) -> int:
    client, keys = dispatcher.bus()
    pipe = client.pipeline(transaction=False)
    for log_id in log_ids:
        pipe.xrange(keys.log(symbol), log_id, log_id)
    found = [e[0] for e in pipe.execute() if e]
    gone = set(log_ids) - {text(i) for i, _ in found}
    if gone:  # trimmed from the log before re-dispatch: nothing left to send
        log.error("%d pending event(s) of %s are no longer in the log: %s", len(gone), symbol, sorted(gone)[:5])
        client.zrem(keys.pending_dispatch_for(symbol), *gone)
    return _send_entries(dispatcher, found, forget=True)


def _send_entries(dispatcher: Dispatcher, entries: list[Any], forget: bool = False) -> int:
    items: list[Item] = []
    ids: list[str | None] = []
    for log_id, fields in entries:
        event = entry_event(fields)
        items.append((event, entry_payload(fields), dispatcher.routes_for(event)))
        ids.append(text(log_id) if forget else None)
    if not items:
        return 0
    dispatcher.retry_broker_now()
    dispatcher.send_many(items, ids, strict=True)
    return len(items)


def forget_pending(
    client: redis.Redis, keys: Keys, items: Sequence[tuple[TradeEvent, Any, Any]], log_ids: Sequence[str | None]
) -> None:
    """ZREM the pending-dispatch entries of events whose tasks were enqueued (one round trip)."""
    if not any(log_ids):
        return
    pipe = client.pipeline(transaction=False)
    for (event, _, _), log_id in zip(items, log_ids, strict=True):
        if log_id:
            pipe.zrem(keys.pending_dispatch_for(event.symbol), log_id)
    pipe.execute()
