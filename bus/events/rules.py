"""Envelope rules (symbol, timestamp, event id, JSON-safe numbers), shared by every way an event is built.

The rules of ``data`` are the payload models (bus/events/payloads.py)."""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from bus.defaults import MAX_SYMBOL_LENGTH
from bus.errors import EventValidationError

CANONICAL_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00")
EVENT_ID = re.compile(r"[^\s:|]{1,128}")
# Characters that would break a channel, a glob pattern or a hash tag: ':' '*' '?' '[' ']' '{' '}',
# backslash, whitespace and control characters.
_BAD_SYMBOL_CHAR = re.compile(r"[:*?\[\]{}\\\s\x00-\x1f\x7f]")


def bad(field: str, value: object, why: str) -> EventValidationError:
    return EventValidationError(f"{field}={value!r}: {why}", field=field, value=value)


def validate_symbol(symbol: object, field: str = "symbol") -> str:
    """Return ``symbol`` if it is safe in a channel and key name, else raise EventValidationError."""
    if not isinstance(symbol, str):
        raise EventValidationError(
            f"{field} must be a string, got {type(symbol).__name__} {symbol!r}", field=field, value=symbol
        )
    if not symbol:
        raise EventValidationError(f"{field} must not be empty", field=field, value=symbol)
    if len(symbol) > MAX_SYMBOL_LENGTH:
        raise EventValidationError(
            f"{field} {symbol[:20]!r}... is {len(symbol)} characters; at most {MAX_SYMBOL_LENGTH} allowed",
            field=field,
            value=symbol,
        )
    bad_char = _BAD_SYMBOL_CHAR.search(symbol)
    if bad_char:
        raise EventValidationError(
            f"{field} {symbol!r} contains {bad_char.group()!r}; symbols may not contain ':' '*' '?' '[' ']' "
            "'{' '}' '\\', whitespace or control characters",
            field=field,
            value=symbol,
        )
    return symbol


def check_finite(value: Any, path: str) -> None:
    """Every number anywhere in `data` must be finite (NaN/inf do not survive JSON)."""
    cls = type(value)
    if cls is str or cls is int or value is None:
        return
    if cls is float:
        if not math.isfinite(value):
            raise bad(path, value, "numbers must be finite")
    elif isinstance(value, float) and not math.isfinite(value):
        raise bad(path, value, "numbers must be finite")
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise bad(path, k, "keys must be strings")
            check_finite(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, f"{path}[{i}]")


def normalise_timestamp(value: Any) -> str:
    """ISO-8601 in UTC. A naive value (``datetime.utcnow().isoformat()``) is taken as UTC."""
    if isinstance(value, str):
        if CANONICAL_UTC.fullmatch(value):
            # already in the form we emit: only check that it is a real date-time
            try:
                datetime.fromisoformat(value)
                return value
            except ValueError:
                raise bad("timestamp", value, "not an ISO-8601 date-time") from None
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise bad("timestamp", value, "not an ISO-8601 date-time") from None
    if not isinstance(value, datetime):
        raise bad("timestamp", value, "must be an ISO-8601 string or a datetime")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def now() -> str:
    return datetime.now(UTC).isoformat()


def new_id() -> str:
    return uuid.uuid4().hex
