"""Validation rules for TradeEvent fields and payloads, shared by every way an event is built."""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from bus.defaults import MAX_SYMBOL_LENGTH
from bus.errors import EventValidationError

# Fields of `data` with a domain meaning, checked wherever they appear.
PRICE_FIELDS = frozenset(
    {
        "price",
        "entry_price",
        "exit_price",
        "fill_price",
        "sl",
        "tp",
        "stop_loss",
        "take_profit",
        "entry",
    }
)
VOLUME_FIELDS = frozenset({"volume", "fill_volume", "closed_volume", "filled_volume", "remaining_volume"})
SIDES = {
    "order_type": frozenset({"BUY", "SELL", "BUY_LIMIT", "SELL_LIMIT", "BUY_STOP", "SELL_STOP"}),
    "side": frozenset({"BUY", "SELL"}),
    "direction": frozenset({"LONG", "SHORT"}),
}
ID_FIELDS = frozenset({"order_id", "position_id", "trade_id", "signal_id"})


CANONICAL_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00")
EVENT_ID = re.compile(r"[^\s:|]{1,128}")
ENTITY_ID = re.compile(r"[^\s:*?\[\]{}|]{1,128}")
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


def check_number(field: str, value: Any, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"data.{field}", value, "must be a number")
    if positive and value <= 0:
        raise bad(f"data.{field}", value, "must be > 0")


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


def validate_data(v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise bad("data", v, "must be a JSON object (dict)")
    data = dict(v)
    for field, value in v.items():
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                raise bad(f"data.{field}", value, "numbers must be finite")
        elif kind is not str and kind is not int and value is not None:
            check_finite(value, f"data.{field}")
        if type(field) is not str:
            raise bad("data", field, "keys must be strings")
        rule = FIELD_RULE.get(field)
        if rule is None or value is None:
            continue
        if rule == "positive":
            check_number(field, value, positive=True)
        elif rule == "number":
            check_number(field, value, positive=False)
        elif rule == "id":
            data[field] = id_string(field, value)
        else:
            allowed = SIDES[field]
            norm = value.upper() if isinstance(value, str) else value
            if norm not in allowed:
                raise bad(f"data.{field}", value, f"must be one of {', '.join(sorted(allowed))}")
            data[field] = norm
    return data


FIELD_RULE = {
    **{f: "positive" for f in PRICE_FIELDS | VOLUME_FIELDS},
    "pnl": "number",
    **{f: "id" for f in ID_FIELDS},
    **{f: "side" for f in SIDES},
}


def id_string(field: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise bad(f"data.{field}", value, "must be a string or an integer")
    text = str(value)
    if not ENTITY_ID.fullmatch(text):
        raise bad(f"data.{field}", value, "must be 1-128 characters without ':*?[]{}|' or spaces")
    return text
