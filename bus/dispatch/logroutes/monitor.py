"""How far each log route has got, per symbol, and beat's safety net: wake groups nobody drains.

``route_lag`` reads ``XINFO GROUPS`` of each symbol's log (what an operator sees with plain redis-cli),
plus whether a drainer holds the lease and how long the oldest waiting entry has waited (from its log
id's time, against the server's clock). ``stale`` picks the groups beat must wake: entries waiting (new
or pending) longer than the grace period and no lease holder. That covers a drainer that died (its lease
expired, its pending entries wait for the next drainer), a wake-up lost with a separate broker, and entries
no publish woke the route for (events the route does not take: acknowledged by the next drain).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import redis

from bus.core.keys import Keys
from bus.core.wire import LogEntries, parse_id
from bus.dispatch.routing import LOG, Route, RoutingTable

Status = Literal["ok", "warn"]


@dataclass(frozen=True)
class GroupLag:
    route: str
    symbol: str
    lag: int | None  # entries not yet read by the group (None: Redis cannot tell, e.g. after XDEL)
    pending: int  # read by a drainer and not yet acknowledged
    last_delivered: str
    drainer: bool  # a drainer holds the lease
    waiting_ms: int  # age of the oldest waiting entry (0: nothing waits)

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
        pipe.xrange(keys.log(symbol), f"({_text(g['last-delivered-id'])}", "+", count=1)
    replies = pipe.execute(raise_on_error=False)
    out = []
    for i, (symbol, route, g) in enumerate(found):
        held, pend, nxt = replies[3 * i : 3 * i + 3]
        oldest = [pend["min"]] if isinstance(pend, dict) and pend.get("min") else []
        oldest += [nxt[0][0]] if isinstance(nxt, list) and nxt else []
        waited = max((now_ms - parse_id(x)[0] for x in oldest), default=0)
        lag = g.get("lag")
        out.append(GroupLag(route.name, symbol, None if lag is None else int(lag), int(g["pending"]),
                            _text(g["last-delivered-id"]), bool(held), max(0, waited)))  # fmt: skip
    return out


def caught_up(client: redis.Redis, keys: Keys, routing: RoutingTable, lags: list[GroupLag]) -> bool:
    """Every group has applied every entry its route takes. Entries a route does not take wake nobody, so
    they may wait in its lag until its next drain (or beat's wake job) acknowledges them."""
    for g in lags:
        if g.pending:
            return False
        route = routing.get(g.route)
        if not g.lag or route is None:
            continue
        rows = cast(LogEntries, client.xrange(keys.log(g.symbol), f"({g.last_delivered}", "+", count=min(g.lag, 1000)))
        if g.lag > 1000 or any(route.matches(_text(f.get(b"type", b"")), g.symbol) for _, f in rows):
            return False
    return True


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
    near_cap = [g for g in lags if (g.lag or 0) > log_maxlen // 2]
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
