"""A Prometheus collector of the bus's Redis-side figures, read from Redis on every scrape."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis

from bus.core.keys import Keys
from bus.dispatch.logroutes.monitor import log_routes, route_lag
from bus.dispatch.routing import RoutingTable
from bus.monitor.snapshot import snapshot

log = logging.getLogger(__name__)

#: the gauges this collector yields, for the dashboard test and the docs
GAUGE_NAMES = (
    "tradebus_pending_dispatch",
    "tradebus_dead_letters",
    "tradebus_kill_switches_engaged",
    "tradebus_symbols",
    "tradebus_redis_up",
    "tradebus_logroute_lag",
    "tradebus_logroute_pending",
    "tradebus_logroute_oldest_waiting_seconds",
    "tradebus_route_done",
    "tradebus_route_latency_mean_seconds",
)


class RedisGauges:
    """``registry.register(RedisGauges(client, keys))``: gauges computed when scraped, not kept."""

    def __init__(self, client: redis.Redis, keys: Keys, routing: RoutingTable | None = None) -> None:
        self.client, self.keys, self.routing = client, keys, routing

    def describe(self) -> Iterator[Any]:
        return iter(())  # no read of Redis at registration time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            snap = snapshot(self.client, self.keys)
        except redis.RedisError as e:  # the scrape still answers: Redis being down is itself the figure
            log.warning("metrics: Redis unreachable: %s", e)
            yield GaugeMetricFamily("tradebus_redis_up", "1 when the bus's Redis answered this scrape.", value=0)
            return
        yield GaugeMetricFamily("tradebus_redis_up", "1 when the bus's Redis answered this scrape.", value=1)
        yield GaugeMetricFamily(
            "tradebus_pending_dispatch", "Logged events whose tasks are not yet recorded as enqueued.",
            value=snap.pending_dispatch,
        )  # fmt: skip
        yield GaugeMetricFamily("tradebus_dead_letters", "Entries in the dead-letter stream.", value=snap.dead_letters)
        yield GaugeMetricFamily(
            "tradebus_kill_switches_engaged", "Symbols whose kill switch is engaged.", value=len(snap.kill_switches)
        )
        yield GaugeMetricFamily("tradebus_symbols", "Symbols with an event log.", value=snap.symbols)
        done = GaugeMetricFamily("tradebus_route_done", "Events whose route task or drain finished (the workers' "
                                 "stats).", labels=["route"])  # fmt: skip
        mean = GaugeMetricFamily("tradebus_route_latency_mean_seconds", "Mean seconds from publish to route done.",
                                 labels=["route"])  # fmt: skip
        for route, (n, mean_ms) in sorted(snap.route_latency().items()):
            done.add_metric([route], n)
            mean.add_metric([route], mean_ms / 1000)
        yield done
        yield mean
        if self.routing is not None:
            yield from self._log_routes(self.routing)

    def _log_routes(self, routing: RoutingTable) -> Iterator[Any]:
        """Per log route, summed over symbols (a label per symbol would grow without bound): XINFO GROUPS."""
        from prometheus_client.core import GaugeMetricFamily

        try:
            groups = route_lag(self.client, self.keys, routing)
        except redis.RedisError as e:
            log.warning("metrics: log-route lag unreadable: %s", e)
            return
        lag = GaugeMetricFamily("tradebus_logroute_lag", "Unread log entries of the types the route takes.",
                                labels=["route"])  # fmt: skip
        pending = GaugeMetricFamily("tradebus_logroute_pending", "Log entries read by a drainer, not acknowledged.",
                                    labels=["route"])  # fmt: skip
        oldest = GaugeMetricFamily("tradebus_logroute_oldest_waiting_seconds",
                                   "Age of the oldest entry a route has not applied (0: caught up).",
                                   labels=["route"])  # fmt: skip
        for route in (r.name for r in log_routes(routing)):
            mine = [g for g in groups if g.route == route]
            lag.add_metric([route], sum(g.lag or 0 for g in mine))
            pending.add_metric([route], sum(g.pending for g in mine))
            oldest.add_metric([route], max((g.waiting_ms for g in mine), default=0) / 1000)
        yield from (lag, pending, oldest)
