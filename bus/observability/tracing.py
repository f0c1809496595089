"""OpenTelemetry spans: one per publish (producer) and one per task attempt (consumer, continuing the
publish's trace from the task message's ``traceparent`` header).

The library depends on opentelemetry-api only; the application picks the SDK and exporter. Until it
sets a tracer provider, ``active_tracer()`` is None after one dict lookup (``opentelemetry.trace`` not
imported) or one isinstance check (the API's proxy provider), and the call sites do nothing else.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

#: instrumentation scope of tradebus's spans
SCOPE = "tradebus"
#: the W3C trace context header(s) a task message carries
TRACE_HEADERS = ("traceparent", "tracestate")

_cached: tuple[Any, Any] | None = None  # (provider, its tracer)


_provider: Any | None = None  # set_tracer_provider's, else OpenTelemetry's global one


def set_tracer_provider(provider: Any | None) -> None:
    """Trace tradebus with ``provider`` rather than OpenTelemetry's global provider (None: the global again)."""
    global _provider
    _provider = provider


def active_tracer() -> Any | None:
    """The tracer of the configured provider; None while the application configured none."""
    global _cached
    provider = _provider
    if provider is None:
        otel = sys.modules.get("opentelemetry.trace")
        # _TRACER_PROVIDER stays None until the application sets one; get_tracer_provider() would read
        # the environment on every call (its OTEL_PYTHON_TRACER_PROVIDER fallback): microseconds per publish
        if otel is None or getattr(otel, "_TRACER_PROVIDER", True) is None:
            return None
        provider = otel.get_tracer_provider()
        if isinstance(provider, otel.ProxyTracerProvider | otel.NoOpTracerProvider):
            return None
    if _cached is None or _cached[0] is not provider:
        _cached = (provider, provider.get_tracer(SCOPE))
    return _cached[1]


@contextmanager
def publish_span(tracer: Any, event: Any) -> Iterator[Any]:
    """A producer span around one publish; its context is current, so task messages built inside carry it."""
    from opentelemetry.trace import SpanKind

    attributes = {
        "messaging.system": "tradebus",
        "messaging.operation.type": "publish",
        "tradebus.event_type": event.event_type.value,
        "tradebus.symbol": event.symbol,
        "tradebus.event_id": event.event_id,
    }
    with tracer.start_as_current_span(f"publish {event.event_type.value}", kind=SpanKind.PRODUCER,
                                      attributes=attributes) as span:  # fmt: skip
        yield span


def trace_headers() -> dict[str, str]:
    """The current span's W3C trace context as message headers; {} when no tracer is configured."""
    if active_tracer() is None:
        return {}
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return {k: v for k, v in carrier.items() if k in TRACE_HEADERS}


@contextmanager
def task_span(tracer: Any, task: str, route: str | None, headers: Mapping[str, Any]) -> Iterator[Any]:
    """A consumer span around one task attempt, a child of the publish whose context ``headers`` carry."""
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    parent = extract({k: str(headers[k]) for k in TRACE_HEADERS if headers.get(k)})
    attributes = {"messaging.system": "tradebus", "messaging.operation.type": "process",
                  "tradebus.task": task, "tradebus.route": route or ""}  # fmt: skip
    with tracer.start_as_current_span(f"task {route or task}", context=parent, kind=SpanKind.CONSUMER,
                                      attributes=attributes) as span:  # fmt: skip
        yield span
