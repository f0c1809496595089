"""Per-route figures for `tradebus top` and the demo summary: done/s and publish-to-done latency (from
the workers' stats, ``count_run`` in celery_app/tasks/base.py) and each log route's lag (XINFO GROUPS)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import redis

from bus.core.keys import Keys
from bus.dispatch.logroutes.monitor import log_routes, route_lag
from bus.dispatch.routing import RoutingTable
from bus.monitor.snapshot import snapshot


@dataclass(frozen=True)
class RouteFigures:
    route: str
    done: int  # events done since the stats were reset
    per_second: float  # done per second since the previous poll
    latency_ms: float | None  # mean publish-to-done over that interval (over all time on the first poll)
    lag: int | None = None  # log routes: entries not yet read, summed over symbols
    pending: int | None = None  # log routes: entries read and not yet acknowledged
    oldest_waiting_ms: int | None = None  # log routes: the oldest entry not yet applied


class RouteReader:
    """``poll()``: every route with figures since the previous poll (the first poll starts the clock)."""

    def __init__(self, client: redis.Redis, keys: Keys, routing: RoutingTable) -> None:
        self.client, self.keys, self.routing = client, keys, routing
        self._last: dict[str, tuple[int, float]] = {}  # route -> (done, mean ms) at the previous poll
        self._at = time.monotonic()

    def poll(self) -> list[RouteFigures]:
        totals = snapshot(self.client, self.keys).route_latency()
        lags = route_lag(self.client, self.keys, self.routing)
        now = time.monotonic()
        seconds, self._at = now - self._at, now
        names = sorted({r.name for r in self.routing} | set(totals))
        logged = {r.name for r in log_routes(self.routing)}
        out = []
        for name in names:
            done, mean = totals.get(name, (0, 0.0))
            before_n, before_mean = self._last.get(name, (0, 0.0))
            new = done - before_n
            if new > 0:
                latency: float | None = (done * mean - before_n * before_mean) / new
            else:
                latency = mean if done and name not in self._last else None
            figures = RouteFigures(name, done, new / seconds if seconds > 0 and name in self._last else 0.0, latency)
            if name in logged:
                mine = [g for g in lags if g.route == name]
                figures = replace(figures, lag=sum(g.lag or 0 for g in mine), pending=sum(g.pending for g in mine),
                                  oldest_waiting_ms=max((g.waiting_ms for g in mine), default=0))  # fmt: skip
            out.append(figures)
            self._last[name] = (done, mean)
        return out
