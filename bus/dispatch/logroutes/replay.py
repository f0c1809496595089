"""Replay to a log route: re-apply a range of the log through the route's effect, on purpose.

It is explicit (``tradebus replay SYMBOL --log-route NAME``) because it applies entries the route has
already applied: only effects registered as replayable (applying an entry twice is harmless, as for the
state projection) are replayed; others (risk would raise its breaches again) are refused. The replay
holds the route's drain lease, so it never interleaves with a drain of the same symbol, commits each
batch fenced by that lease, and does not move the group: entries the route has not read yet are left
to its drains, which a wake-up sent at the end resumes (publishes during the replay found a wake-up
pending and sent none).
"""

from __future__ import annotations

from typing import Any, cast

import redis

from bus.core.connection import slot_client
from bus.core.keys import Keys
from bus.core.wire import LogEntries, decode_entry
from bus.dispatch.logroutes.config import LogRouteConfig
from bus.dispatch.logroutes.effects import Batch, Effect, LogEntry, LogRouteError, is_replayable
from bus.dispatch.routing import Route


class LeaseBusyError(LogRouteError):
    """The route's drain lease is held: a drain is running; try again shortly."""

    retryable = True


def replay_range(client: redis.Redis, keys: Keys, route: Route, symbol: str, effect: Effect, *, start: str = "-",
                 end: str = "+", token: str, config: LogRouteConfig | None = None, context: Any = None,
                 publisher: Any = None) -> int:  # fmt: skip
    """Re-apply the entries of ``symbol``'s log from ``start`` to ``end`` (inclusive) that ``route`` takes, in
    log order; returns how many. Raises LogRouteError if the effect is not replayable, LeaseBusyError if a
    drainer holds the lease."""
    if not is_replayable(route):
        raise LogRouteError(f"log route {route.name!r}: its effect {route.task!r} is not registered as replayable")
    config = config or LogRouteConfig()
    lease = keys.drain_lease(route.name, symbol)
    if not client.set(lease, token, nx=True, px=config.lease_ms):
        raise LeaseBusyError(f"log route {route.name!r} is being drained for {symbol}")
    applied, cursor = 0, start
    try:
        while True:
            rows = cast(LogEntries, client.xrange(keys.log(symbol), cursor, end, count=config.batch))
            if not rows:
                return applied
            entries = []
            for raw_id, fields in rows:
                event = decode_entry(fields)
                if event is not None and route.matches(event.event_type.value, event.symbol):
                    entries.append(LogEntry(raw_id.decode(), event, fields.get(b"event", b"")))
            with slot_client(client, lease).pipeline(transaction=True) as tx:  # a Cluster: the slot's master
                tx.watch(lease)
                if tx.get(lease) != token.encode():
                    raise LogRouteError(f"log route {route.name!r}: replay lost its lease for {symbol}")
                tx.multi()
                batch = Batch(route, symbol, entries, client, keys, tx, context, publisher)
                effect(batch)
                tx.pexpire(lease, config.lease_ms)
                results = tx.execute()  # WatchError: the lease changed hands; nothing of this batch applied
            for hook in batch.hooks:
                hook(results)
            applied += len(entries)
            cursor = f"({rows[-1][0].decode()}"
    finally:
        _release(client, lease, token)


_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def _release(client: redis.Redis, lease: str, token: str) -> None:
    client.eval(_RELEASE, 1, lease, token)
