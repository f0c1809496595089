"""How far each log route has got, per symbol, and beat's safety net: wake groups nobody drains.

``route_lag`` reads ``XINFO GROUPS`` of each symbol's log (what an operator sees with plain redis-cli),
plus whether a drainer holds the lease and how long the oldest waiting entry has waited (from its log
id's time, against the server's clock). A group's ``lag`` counts the unread entries its route takes:
Redis's own lag (``unread``) also counts entries of types the route does not take, which wake nobody and
wait, unread, for the route's next drain to acknowledge them (a risk route beside a stream of order
events would otherwise show a lag that never falls to 0 while nothing is left to apply).

``stale`` picks the groups beat must wake: entries waiting (new or pending) longer than the grace period
and no lease holder. That covers a drainer that died (its lease expired, its pending entries wait for the
next drainer), a wake-up lost with a separate broker, and entries no publish woke the route for (events
the route does not take: acknowledged by the next drain).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import redis

from bus.core.keys import Keys
from bus.core.wire import LogEntries, parse_id
from bus.dispatch.routing import LOG, Route, RoutingTable

Status = Literal["ok", "warn"]
#: unread entries route_lag reads per group to tell the route's own from the others (beyond: counted as its own)
LAG_SCAN = 1000


@dataclass(frozen=True)
class GroupLag:
    route: str
    symbol: str
    lag: int | None  # unread entries the route takes (None: Redis cannot tell, e.g. after XDEL)
    pending: int  # read by a drainer and not yet acknowledged
    last_delivered: str
    drainer: bool  # a drainer holds the lease
    waiting_ms: int  # age of the oldest waiting entry, of any type (0: nothing waits)
    unread: int | None = None  # Redis's lag: every unread entry, the types the route does not take too

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def log_routes(routing: RoutingTable) -> list[Route]:
    return [r for r in routing if r.mode == LOG]


def route_lag(
    client: redis.Redis, keys: Keys, routing: RoutingTable, symbols: list[str] | None = None
) -> list[GroupLag]:
    """Every existing log-route group of every symbol (or of ``symbols``), by symbol then route."""
    routes = {r.name: r for r in log_routes(routing)}
    if not routes:
        return []
    if symbols is None:
        symbols = sorted(_text(s) for s in client.smembers(keys.symbols()))  # type: ignore[union-attr]
    pipe = client.pipeline(transaction=False)
    for symbol in symbols:
        pipe.xinfo_groups(keys.log(symbol))
    found: list[tuple[str, Route, dict[str, Any]]] = []
    for symbol, groups in zip(symbols, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(groups, Exception):  # no log (yet): no group
            continue
        for g in groups:
            route = routes.get(_text(g["name"]))
            if route is not None:
                found.append((symbol, route, g))
    now_ms = _server_ms(client)
    for symbol, route, g in found:  # one round trip for the leases and the oldest waiting entries
        pipe.exists(keys.drain_lease(route.name, symbol))
        if int(g["pending"]):
            pipe.xpending(keys.log(symbol), route.name)
        else:  # a placeholder that names a key: a Cluster pipeline refuses keyless commands (ECHO)
            pipe.exists(keys.log(symbol))
        # the unread entries (to count those the route takes), or the next one (its age: waiting_ms)
        scan = min(int(g["lag"]), LAG_SCAN) if g.get("lag") else 1
        pipe.xrange(keys.log(symbol), f"({_text(g['last-delivered-id'])}", "+", count=scan)
    replies = pipe.execute(raise_on_error=False)
    out = []
    for i, (symbol, route, g) in enumerate(found):
        held, pend, nxt = replies[3 * i : 3 * i + 3]
        rows = cast(LogEntries, nxt) if isinstance(nxt, list) else []
        oldest = [pend["min"]] if isinstance(pend, dict) and pend.get("min") else []
        oldest += [rows[0][0]] if rows else []
        waited = max((now_ms - parse_id(x)[0] for x in oldest), default=0)
        unread = None if g.get("lag") is None else int(g["lag"])
        lag = None if unread is None else _taken(route, symbol, rows[:unread]) + max(0, unread - len(rows))
        out.append(GroupLag(route.name, symbol, lag, int(g["pending"]), _text(g["last-delivered-id"]), bool(held),
                            max(0, waited), unread))  # fmt: skip
    return out


def _taken(route: Route, symbol: str, rows: LogEntries) -> int:
    """How many of the log entries ``rows`` are of a type ``route`` takes."""
    return sum(route.matches(_text(fields.get(b"type", b"")), symbol) for _, fields in rows)


def caught_up(lags: list[GroupLag]) -> bool:
    """Every group has applied every entry its route takes (entries of other types may still wait unread:
    see ``GroupLag.unread``)."""
    return not any(g.pending or g.lag for g in lags)


def oldest_needed(client: redis.Redis, keys: Keys, symbol: str) -> str | None:
    """The oldest entry of ``symbol``'s log that a consumer group still needs (pending, or not yet read),
    or None: what a trim must keep so no log route loses an entry (Race 4)."""
    log = keys.log(symbol)
    try:
        groups = client.xinfo_groups(log)
    except redis.ResponseError:  # no log
        return None
    needed: list[str] = []
    for g in groups:
        if int(g["pending"]):
            needed.append(_text(client.xpending(log, g["name"])["min"]))
        else:
            after = cast(LogEntries, client.xrange(log, f"({_text(g['last-delivered-id'])}", "+", count=1))
            needed += [_text(after[0][0])] if after else []
    return min(needed, key=parse_id, default=None)


def stale(lags: list[GroupLag], grace_ms: int) -> list[GroupLag]:
    """Groups with entries waiting longer than ``grace_ms`` and no drainer: beat wakes them."""
    return [g for g in lags if not g.drainer and g.waiting_ms > grace_ms]


def health(lags: list[GroupLag], *, stuck_after_ms: int, log_maxlen: int) -> tuple[Status, str, str] | None:
    """``(status, detail, fix)`` for `tradebus doctor`, None when no log route has a group yet. Warns on
    entries waiting with no drainer beyond ``stuck_after_ms`` (beat should have woken them) and on a lag
    above half the log's cap (past the cap, trimming removes entries the route has not read: they are
    dead-lettered, not applied)."""
    if not lags:
        return None
    stuck = stale(lags, stuck_after_ms)
    near_cap = [g for g in lags if (g.unread or 0) > log_maxlen // 2]  # trimming takes unread entries of any type
    waiting = sum((g.lag or 0) + g.pending for g in lags)
    detail = f"{len(lags)} group(s), {waiting} entries waiting; see `tradebus state --lag`"
    if not stuck and not near_cap:
        return "ok", detail, ""
    why = "entries waiting with no drainer" if stuck else "lag above half of TRADEBUS_LOG_MAXLEN"
    names = ", ".join(f"{g.route}/{g.symbol}" for g in (stuck + near_cap)[:5])
    return "warn", f"{why}: {names}; {detail}", "run workers for the routes' queues, and celery beat (its wake job)"


def _server_ms(client: redis.Redis) -> int:
    secs, micros = client.time()
    return int(secs) * 1000 + int(micros) // 1000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)
