"""A Prometheus collector of the bus's Redis-side figures, read from Redis on every scrape."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis

from bus.core.keys import Keys
from bus.monitor.snapshot import snapshot

log = logging.getLogger(__name__)

#: the gauges this collector yields, for the dashboard test and the docs
GAUGE_NAMES = (
    "tradebus_pending_dispatch",
    "tradebus_dead_letters",
    "tradebus_kill_switches_engaged",
    "tradebus_symbols",
    "tradebus_redis_up",
)


class RedisGauges:
    """``registry.register(RedisGauges(client, keys))``: gauges computed when scraped, not kept."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client, self.keys = client, keys

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
