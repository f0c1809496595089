"""Envelope rules (timestamp, event id, JSON-safe numbers), shared by every way an event is built.

The rules of ``data`` are the payload models (bus/events/payloads.py)."""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from bus.errors import EventValidationError

CANONICAL_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00")
EVENT_ID = re.compile(r"[^\s:|]{1,128}")


def bad(field: str, value: object, why: str) -> EventValidationError:
    return EventValidationError(f"{field}={value!r}: {why}", field=field, value=value)


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
