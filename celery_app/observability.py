"""The worker's observability hooks: JSON log lines (TRADEBUS_LOG_FORMAT=json) and Prometheus /metrics.

With TRADEBUS_METRICS_PORT set, the worker's main process serves Prometheus.

The pool processes record into prometheus-client's multiprocess files (PROMETHEUS_MULTIPROC_DIR; a
fresh temporary directory when unset), set up here in the main process before the pool forks; the
main process's HTTP server sums them on every scrape and adds the Redis-side gauges (bus.monitor).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bus.core.connection import make_client
from bus.core.keys import Keys
from bus.monitor.gauges import RedisGauges
from bus.observability.logs import configure_logging
from bus.observability.metrics import enable_metrics

from .context import task_context

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def on_worker_init(sender: Any = None, **_: Any) -> None:
    """worker_init (main process, before the pool starts): serve /metrics when the setting asks."""
    app = getattr(sender, "app", None)
    if app is None:
        return
    settings = task_context(app).settings
    if settings.metrics_port is None:
        return
    _multiprocess_dir()
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    client = make_client(settings.bus_url, settings)
    registry.register(RedisGauges(client, Keys(settings.key_prefix), task_context(app).routing))
    enable_metrics()  # before the fork: every pool process inherits the recorder
    start_http_server(settings.metrics_port, registry=registry)
    log.info("serving Prometheus metrics on :%d/metrics", settings.metrics_port)


def on_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    """after_setup_logger / after_setup_task_logger: Celery built its handlers; apply TRADEBUS_LOG_FORMAT."""
    from celery import current_app

    if logger is not None:
        configure_logging(task_context(current_app).settings.log_format, logger)


def on_worker_process_exit(pid: int | None = None, **_: Any) -> None:
    """A pool process exits: its live gauges (if any) stop counting; its counters stay in the sum."""
    if os.environ.get(MULTIPROC_ENV) and "prometheus_client" in sys.modules:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


def _multiprocess_dir() -> None:
    """Point prometheus-client at a directory of its own, emptied: counters of a previous run must not add up."""
    imported_before = "prometheus_client" in sys.modules and not os.environ.get(MULTIPROC_ENV)
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        directory = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="tradebus-metrics-")
    for stale in Path(directory).glob("*.db"):
        stale.unlink()
    if imported_before:
        # Imported already in single-process mode (Flower's celery subcommand imports it when the celery CLI
        # starts): its metrics would keep their figures in memory, each pool process its own, and the scrape
        # would see none. prometheus-client picks the value class when a metric is built, from this global.
        from prometheus_client import values

        values.ValueClass = values.get_value_class()
