"""Prometheus metrics of the process: published events, routes dispatched, tasks, subscriber deliveries.

Off by default: ``RECORDER`` is None and every call site checks it first, so publish() costs one global
read. ``enable_metrics()`` imports prometheus-client (an optional dependency) and builds the metrics
once per process. In a prefork worker set ``PROMETHEUS_MULTIPROC_DIR`` before the first import of
prometheus-client (celery_app.metrics does) so the pool processes' figures add up on one scrape.

Labels are ``event_type``, ``route`` and ``queue`` only: a label per symbol or event id would grow
without bound.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from bus.observability import tally

#: the active recorder; None while metrics are off (the call sites test it, nothing else runs)
RECORDER: Recorder | None = None
_LOCK = threading.Lock()

# Latency buckets in seconds: a publish is ~0.1-2 ms on a local Redis, a task up to seconds.
PUBLISH_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
TASK_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Entries per log-route drain batch (the batch size caps it; 100 by default).
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)


class Recorder:
    """The metrics of this process, registered on ``registry`` (prometheus-client's default one)."""

    def __init__(self, registry: Any = None, *, multiprocess: bool | None = None) -> None:
        from prometheus_client import REGISTRY, Counter, Histogram

        reg = REGISTRY if registry is None else registry
        if multiprocess is None:
            multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        if multiprocess:  # a prefork worker: only prometheus-client's own metrics add up across the pool
            self.published = Counter(*tally.PUBLISHED, ["event_type"], registry=reg)
            self.publish_seconds = Histogram(*tally.PUBLISH_SECONDS, buckets=PUBLISH_BUCKETS, registry=reg)
            self.dispatched = Counter(*tally.DISPATCHED, ["route"], registry=reg)
            self.not_dispatched = Counter(*tally.NOT_DISPATCHED, ["route"], registry=reg)
        else:  # one process: plain ints, read on scrape (the publish path's cost, see tally.py)
            publishes = tally.PublishTally(PUBLISH_BUCKETS)
            reg.register(publishes)
            self.record_publish = publishes.record  # type: ignore[method-assign]
        self.tasks_run = Counter("tradebus_tasks_run_total", "Routed tasks that completed.",
                                 ["route", "queue"], registry=reg)  # fmt: skip
        self.tasks_retried = Counter("tradebus_tasks_retried_total", "Routed task attempts that will be retried.",
                                     ["route", "queue"], registry=reg)  # fmt: skip
        self.tasks_dead_lettered = Counter("tradebus_tasks_dead_lettered_total", "Routed tasks dead-lettered.",
                                           ["route", "queue"], registry=reg)  # fmt: skip
        self.task_seconds = Histogram("tradebus_task_seconds", "Seconds one routed task attempt took.",
                                      ["route", "queue"], buckets=TASK_BUCKETS, registry=reg)  # fmt: skip
        self.route_latency = Histogram("tradebus_route_latency_seconds",
                                       "Seconds from publish (the log id's time) to its route's task or drain done.",
                                       ["route"], buckets=TASK_BUCKETS, registry=reg)  # fmt: skip
        self.batch_size = Histogram("tradebus_drain_batch_size", "Entries one log-route drain batch applied.",
                                    ["route"], buckets=BATCH_BUCKETS, registry=reg)  # fmt: skip
        self.batch_seconds = Histogram("tradebus_drain_batch_seconds",
                                       "Seconds one log-route drain batch took (effect and commit).",
                                       ["route"], buckets=TASK_BUCKETS, registry=reg)  # fmt: skip
        reg.register(_SubscriberCollector())
        reg.register(_OutboxCollector())
        # labelled children by label value: labels() builds and locks on every call, a dict lookup does not
        self._published: dict[str, Any] = {}
        self._dispatched: dict[str, Any] = {}
        self._not_dispatched: dict[str, Any] = {}
        self._tasks: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._latency: dict[str, Any] = {}
        self._batches: dict[str, tuple[Any, Any]] = {}

    def record_publish(
        self, type_values: Iterable[str], seconds: float, dispatched: Iterable[str], not_dispatched: Iterable[str]
    ) -> None:
        self.publish_seconds.observe(seconds)
        for t in type_values:
            _child(self._published, self.published, t).inc()
        for r in dispatched:
            _child(self._dispatched, self.dispatched, r).inc()
        for r in not_dispatched:
            _child(self._not_dispatched, self.not_dispatched, r).inc()

    def record_task(self, outcome: str, route: str, queue: str, seconds: float) -> None:
        """``outcome``: run, retried or dead_lettered."""
        key = (outcome, route, queue)
        children = self._tasks.get(key)
        if children is None:
            counter = {"run": self.tasks_run, "retried": self.tasks_retried}.get(outcome, self.tasks_dead_lettered)
            children = self._tasks[key] = (counter.labels(route, queue), self.task_seconds.labels(route, queue))
        children[0].inc()
        children[1].observe(seconds)

    def record_latency(self, route: str, seconds: Iterable[float]) -> None:
        """Publish-to-done seconds of events ``route`` finished (a task, or the entries of a drain batch)."""
        child = _child(self._latency, self.route_latency, route)
        for s in seconds:
            child.observe(s)

    def record_batch(self, route: str, size: int, seconds: float) -> None:
        children = self._batches.get(route)
        if children is None:
            children = self._batches[route] = (self.batch_size.labels(route), self.batch_seconds.labels(route))
        children[0].observe(size)
        children[1].observe(seconds)


def _child(cache: dict[str, Any], metric: Any, label: str) -> Any:
    child = cache.get(label)
    if child is None:
        child = cache[label] = metric.labels(label)
    return child


class SubscriberCounters(Protocol):
    def snapshot(self) -> dict[str, int]: ...


#: every subscriber's counters in this process, kept after the subscriber closes so totals never go down
_SUBSCRIBER_COUNTERS: list[SubscriberCounters] = []
#: subscriber counter -> (metric name, help); the counters stay plain ints on the delivery path
SUBSCRIBER_METRICS = {
    "delivered": ("tradebus_subscriber_delivered_total", "Events handed to subscriber handlers."),
    "handler_errors": ("tradebus_subscriber_handler_errors_total", "Subscriber handler calls that raised."),
    "malformed": ("tradebus_subscriber_malformed_total", "Broadcasts or log entries that were not a valid event."),
    "recovered_from_log": ("tradebus_subscriber_gaps_healed_total", "Events a subscriber recovered from the log."),
    "gaps_lost": ("tradebus_subscriber_gaps_lost_total", "Gaps the log could no longer cover."),
    "reconnects": ("tradebus_subscriber_reconnects_total", "Subscriber connections re-made."),
    "events_lost": ("tradebus_subscriber_events_lost_total", "Events trimmed before a subscriber read them."),
    "forged": ("tradebus_subscriber_forged_total", "Broadcasts the log contradicted (forged, corrupt or replayed)."),
    "loop_errors": ("tradebus_subscriber_loop_errors_total", "Unexpected errors a subscriber loop survived."),
}


def track_subscriber(counters: SubscriberCounters) -> None:
    """Report ``counters`` (a subscriber's Counters) on scrape; read then, so delivery costs nothing more."""
    _SUBSCRIBER_COUNTERS.append(counters)


class _SubscriberCollector:
    """Sums the subscribers' counters of this process when scraped."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        totals = dict.fromkeys(SUBSCRIBER_METRICS, 0)
        for c in list(_SUBSCRIBER_COUNTERS):
            for field, value in c.snapshot().items():
                if field in totals:
                    totals[field] += value
        for field, (name, doc) in SUBSCRIBER_METRICS.items():
            yield CounterMetricFamily(name.removesuffix("_total"), doc, value=totals[field])


class OutboxFigures(Protocol):
    """An executor's outbox publisher (bus.executor.outbox.OutboxPublisher), read on scrape."""

    @property
    def pending(self) -> int: ...

    flushes: int
    flushed: int


#: every live outbox publisher of this process (an executor has one or a few)
_OUTBOXES: weakref.WeakSet[Any] = weakref.WeakSet()
#: flushes / events flushed by outbox publishers since collected, so the counters never go down
_GONE = [0, 0]
#: metric name -> (help, kind) of the outbox figures
OUTBOX_METRICS = {
    "tradebus_outbox_depth": "Events waiting in executors' outboxes for Redis (this process).",
    "tradebus_outbox_flushes_total": "Outbox flushes that sent queued events.",
    "tradebus_outbox_flushed_events_total": "Queued events outbox flushes sent.",
}


def track_outbox(outbox: OutboxFigures) -> None:
    """Report ``outbox``'s depth and flushes on scrape (read then: publish costs nothing more)."""
    _OUTBOXES.add(outbox)
    weakref.finalize(outbox, _forget, outbox.__dict__)


def _forget(figures: dict[str, Any]) -> None:
    _GONE[0] += figures.get("flushes", 0)
    _GONE[1] += figures.get("flushed", 0)


class _OutboxCollector:
    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        depth, flushes, flushed = 0, _GONE[0], _GONE[1]
        for o in list(_OUTBOXES):
            flushes, flushed = flushes + o.flushes, flushed + o.flushed
            with contextlib.suppress(Exception):  # a closed outbox has no depth to report
                depth += o.pending
        names = list(OUTBOX_METRICS)
        yield GaugeMetricFamily(names[0], OUTBOX_METRICS[names[0]], value=depth)
        yield CounterMetricFamily(names[1].removesuffix("_total"), OUTBOX_METRICS[names[1]], value=flushes)
        yield CounterMetricFamily(names[2].removesuffix("_total"), OUTBOX_METRICS[names[2]], value=flushed)


def enable_metrics(registry: Any = None) -> Recorder:
    """Turn metrics on in this process (idempotent); after disable_metrics() the same metrics resume
    (prometheus-client registers a name once per registry)."""
    global RECORDER, _BUILT
    with _LOCK:
        if _BUILT is None:
            _BUILT = Recorder(registry)
        RECORDER = _BUILT
        return RECORDER


def disable_metrics() -> None:
    """Stop recording: the call sites skip their metrics again."""
    global RECORDER
    RECORDER = None


_BUILT: Recorder | None = None
