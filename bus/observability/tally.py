"""The publish path's figures as plain integers, turned into Prometheus families only when scraped.

prometheus-client's Counter and Histogram take a lock and run several Python calls per update: four
updates per publish (the latency histogram, the event type, each route) cost ~8% of a publish's own
instructions (bench/README.md, "observability"). ``PublishTally`` keeps the same figures as ints under
one lock and yields the same metric families on scrape, for ~1/4 of that. It serves a single process
(an executor, a service); prefork workers publish through prometheus-client's multiprocess metrics
instead (``Recorder`` picks), because only those add up across the pool's processes.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

#: (metric name, help) of the figures kept here; the names the multiprocess path registers too
PUBLISHED = ("tradebus_events_published_total", "Events published, by type.")
PUBLISH_SECONDS = ("tradebus_publish_seconds", "Seconds one publish() call took.")
DISPATCHED = ("tradebus_routes_dispatched_total", "Route tasks enqueued by publish.")
NOT_DISPATCHED = ("tradebus_routes_not_dispatched_total",
                  "Route tasks the broker did not take (left to beat's re-dispatch).")  # fmt: skip


class PublishTally:
    """Events published by type, routes (not) dispatched, publish seconds: a collector for a registry."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self._bounds = tuple(buckets)
        self._lock = threading.Lock()
        self._by_type: dict[str, int] = {}
        self._dispatched: dict[str, int] = {}
        self._not_dispatched: dict[str, int] = {}
        self._buckets = [0] * (len(self._bounds) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0

    def record(
        self, type_values: Iterable[str], seconds: float, dispatched: Iterable[str], not_dispatched: Iterable[str]
    ) -> None:
        at = bisect_left(self._bounds, seconds)  # the first bound >= seconds: Prometheus's "le"
        with self._lock:
            self._buckets[at] += 1
            self._sum += seconds
            counts = self._by_type
            for t in type_values:
                counts[t] = counts.get(t, 0) + 1
            counts = self._dispatched
            for r in dispatched:
                counts[r] = counts.get(r, 0) + 1
            counts = self._not_dispatched
            for r in not_dispatched:
                counts[r] = counts.get(r, 0) + 1

    def describe(self) -> Iterator[Any]:
        return self.collect()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        with self._lock:
            by_type, dispatched = dict(self._by_type), dict(self._dispatched)
            not_dispatched, buckets, total = dict(self._not_dispatched), list(self._buckets), self._sum
        for (name, doc), label, counts in ((PUBLISHED, "event_type", by_type), (DISPATCHED, "route", dispatched),
                                           (NOT_DISPATCHED, "route", not_dispatched)):  # fmt: skip
            family = CounterMetricFamily(name.removesuffix("_total"), doc, labels=[label])
            for value, n in sorted(counts.items()):
                family.add_metric([value], n)
            yield family
        from prometheus_client.utils import floatToGoString

        cumulative, running = [], 0
        for bound, n in zip((*map(floatToGoString, self._bounds), "+Inf"), buckets, strict=True):
            running += n
            cumulative.append((bound, running))
        yield HistogramMetricFamily(PUBLISH_SECONDS[0], PUBLISH_SECONDS[1], buckets=cumulative, sum_value=total)
