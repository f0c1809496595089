"""OpenTelemetry spans: one per publish (producer), per task attempt (consumer, continuing the publish's
trace from the task message's ``traceparent`` header), per log-route drain batch (linked to each entry's
publish) and per subscriber delivery (a child of the publish).

The trace context rides with the event: while a publish span is active, the publish scripts add its W3C
``traceparent`` to the log entry (field ``tp``) and to the broadcast (a ``tp`` field beside ``log_id``);
with no tracer nothing is added, byte for byte. Readers hand out plain TradeEvents and remember the
context they came with: ``context_of(event)`` gives it to a handler (a span around the handler call is a
child of it already).

The library depends on opentelemetry-api only; the application picks the SDK and exporter. Until it
sets a tracer provider, ``active_tracer()`` is None after one dict lookup (``opentelemetry.trace`` not
imported) or one isinstance check (the API's proxy provider), and the call sites do nothing else.
"""

from __future__ import annotations

import re
import sys
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from functools import partial
from typing import Any

#: instrumentation scope of tradebus's spans
SCOPE = "tradebus"
#: the W3C trace context header(s) a task message carries
TRACE_HEADERS = ("traceparent", "tracestate")

#: a W3C traceparent (version 00): what the scripts are given and readers accept, nothing else
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
#: what a span helper returns while no tracer is configured (reusable, costs one call)
NOTHING: AbstractContextManager[None] = nullcontext()

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
    from opentelemetry.trace import use_span

    with use_span(start_publish_span(tracer, event), end_on_exit=True) as span:
        yield span


def current(span: Any) -> AbstractContextManager[Any]:
    """Make ``span`` the current span for a block (it is not ended on leaving it)."""
    from opentelemetry.trace import use_span

    return use_span(span, end_on_exit=False)


def start_publish_span(tracer: Any, event: Any) -> Any:
    """The producer span of one publish, started (not current; the caller ends it)."""
    from opentelemetry.trace import SpanKind

    attributes = {
        "messaging.system": "tradebus",
        "messaging.operation.type": "publish",
        "tradebus.event_type": event.event_type.value,
        "tradebus.symbol": event.symbol,
        "tradebus.event_id": event.event_id,
    }
    return tracer.start_span(f"publish {event.event_type.value}", kind=SpanKind.PRODUCER, attributes=attributes)


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


# --- the trace context an event travels with (log entry / broadcast field ``tp``) -------------------------


def current_traceparent() -> str | None:
    """The active span's W3C traceparent, to carry with an event; None when no tracer is configured."""
    if active_tracer() is None:
        return None
    from opentelemetry.trace import get_current_span

    ctx = get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


#: id(event) -> (a weak reference to it, the traceparent it arrived with); entries leave with their event
_CARRIED: dict[int, tuple[weakref.ref[Any], str]] = {}
#: most events remembered at once (a reader keeping every event alive must not grow this without bound)
CARRIED_MAX = 10_000


def carry(event: Any, traceparent: Any) -> None:
    """Remember that ``event`` arrived with ``traceparent`` (a reader calls this; ignored unless valid)."""
    tp = _valid(traceparent)
    if tp is None:
        return
    if len(_CARRIED) >= CARRIED_MAX:
        with suppress(StopIteration, RuntimeError):  # emptied or changed by another thread meanwhile
            _CARRIED.pop(next(iter(_CARRIED)), None)  # the oldest
    key = id(event)
    _CARRIED[key] = (weakref.ref(event, partial(_forget, key)), tp)


def _forget(key: int, _ref: Any) -> None:
    _CARRIED.pop(key, None)


def _valid(traceparent: Any) -> str | None:
    """``traceparent`` as str when it is one (hostile input from a channel or the log: None otherwise)."""
    tp = traceparent.decode("ascii", "replace") if isinstance(traceparent, bytes) else traceparent
    return tp if isinstance(tp, str) and TRACEPARENT.fullmatch(tp) else None


def traceparent_of(event: Any) -> str | None:
    """The traceparent ``event`` arrived with (from a broadcast or a log entry), or None."""
    found = _CARRIED.get(id(event))
    return found[1] if found is not None and found[0]() is event else None


def span_context(traceparent: Any) -> Any | None:
    """The remote SpanContext a traceparent names, or None when it is missing or not one."""
    tp = _valid(traceparent)
    if tp is None:
        return None
    from opentelemetry.trace import SpanContext, TraceFlags

    _, trace_id, span_id, flags = tp.split("-")
    ctx = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16)))
    return ctx if ctx.is_valid else None


def context_of(event: Any) -> Any | None:
    """The OpenTelemetry Context of the publish ``event`` came from (to start a child span with
    ``tracer.start_as_current_span(name, context=context_of(event))``), or None when it carried none."""
    remote = span_context(traceparent_of(event))
    if remote is None:
        return None
    from opentelemetry.trace import NonRecordingSpan, set_span_in_context

    return set_span_in_context(NonRecordingSpan(remote))


def delivery_span(subscription: str, event: Any) -> AbstractContextManager[Any]:
    """A consumer span around the handlers' call for one event, a child of its publish; NOTHING when no
    tracer is configured (the subscribers' one line: ``with tracing.delivery_span(sub.name, event):``)."""
    tracer = active_tracer()
    if tracer is None:
        return NOTHING
    from opentelemetry.trace import SpanKind

    attributes = {"messaging.system": "tradebus", "messaging.operation.type": "process",
                  "messaging.destination.name": subscription, "tradebus.event_type": event.event_type.value,
                  "tradebus.symbol": event.symbol, "tradebus.event_id": event.event_id}  # fmt: skip
    return tracer.start_as_current_span(f"deliver {event.event_type.value}", context=context_of(event),
                                        kind=SpanKind.CONSUMER, attributes=attributes)  # fmt: skip


def batch_span(tracer: Any, route: str, symbol: str, traceparents: Sequence[Any]) -> AbstractContextManager[Any]:
    """A span around one log-route drain batch's effect, linked to the publish of each entry that carried
    a trace context (``traceparents``: the entries' ``tp`` fields, None for those without)."""
    from opentelemetry.trace import Link, SpanKind

    links = [Link(ctx) for ctx in map(span_context, traceparents) if ctx is not None]
    attributes = {"messaging.system": "tradebus", "messaging.operation.type": "process",
                  "messaging.batch.message_count": len(traceparents), "tradebus.route": route,
                  "tradebus.symbol": symbol}  # fmt: skip
    return tracer.start_as_current_span(f"drain {route}", kind=SpanKind.CONSUMER, links=links,
                                        attributes=attributes)  # fmt: skip
