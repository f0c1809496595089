"""JSON log lines: one object per line, the event's fields as keys (TRADEBUS_LOG_FORMAT=json)."""

from __future__ import annotations

import io
import json
import logging

from bus.events.model import TradeEvent
from bus.observability.logs import configure_logging, event_fields


def test_json_lines_carry_the_event_fields() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.observability.json")
    logger.propagate = False
    logger.addHandler(logging.StreamHandler(stream))
    try:
        configure_logging("json", logger)
        event = TradeEvent.create_trade_failed("XAUUSD", "boom", correlation_id="c-1")
        logger.warning("task failed on %s", event.event_id, extra=event_fields(event, "notify"))
    finally:
        logger.handlers.clear()
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["message"] == f"task failed on {event.event_id}"
    assert (line["logger"], line["level"]) == ("tests.observability.json", "WARNING")
    assert {k: line[k] for k in ("event_id", "correlation_id", "route", "symbol")} == {
        "event_id": event.event_id, "correlation_id": "c-1", "route": "notify", "symbol": "XAUUSD"}  # fmt: skip


def test_text_format_leaves_the_handlers_alone() -> None:
    logger = logging.getLogger("tests.observability.text")
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    try:
        configure_logging("text", logger)
        assert handler.formatter is None
    finally:
        logger.handlers.clear()
