"""Structured logs: the fields every line about an event carries, and JSON lines (TRADEBUS_LOG_FORMAT=json).

Loggers are named after their module (``logging.getLogger(__name__)``: ``bus.core.subscriber``,
``celery_app.tasks.base``...). A line about an event passes ``extra=event_fields(event, route)``; the
text format ignores the fields, the JSON format writes them as keys of the line's object, so logs join
with traces and with the event log on ``event_id`` / ``correlation_id``.
"""

from __future__ import annotations

import logging
from typing import Any

#: the structured fields of a line about an event
EVENT_FIELDS = ("event_id", "correlation_id", "route", "symbol")
#: the standard record attributes a JSON line keeps besides the message and the event fields
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s %(process)d"


def event_fields(event: Any, route: str | None = None) -> dict[str, Any]:
    """``extra=`` for a log line about ``event`` (a TradeEvent, or None when it could not be decoded)."""
    return {
        "event_id": getattr(event, "event_id", None),
        "correlation_id": getattr(event, "correlation_id", None),
        "route": route,
        "symbol": getattr(event, "symbol", None),
    }


def json_formatter() -> logging.Formatter:
    """python-json-logger's formatter: one JSON object per line, the ``extra=`` fields as keys."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(JSON_FORMAT, rename_fields={"levelname": "level", "name": "logger"})


def use_json_lines(logger: logging.Logger | None = None) -> None:
    """Switch the handlers of ``logger`` (default: the root logger) to JSON lines; add one on stderr if none."""
    target = logger if logger is not None else logging.getLogger()
    if not target.handlers:
        target.addHandler(logging.StreamHandler())
    formatter = json_formatter()
    for handler in target.handlers:
        handler.setFormatter(formatter)


def configure_logging(log_format: str, logger: logging.Logger | None = None) -> None:
    """Apply TRADEBUS_LOG_FORMAT: "json" switches to JSON lines; "text" leaves the handlers as they are."""
    if log_format == "json":
        use_json_lines(logger)
