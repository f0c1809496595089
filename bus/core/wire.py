"""The wire format: stream ids, log entries and broadcasts as publish.lua (and publish_many.lua) write them.

Log entry fields: ``TYPE_FIELD`` (the event type value), ``EVENT_FIELD`` (the event JSON) and, when the
publish was traced, ``TRACE_FIELD`` (its W3C traceparent). A broadcast is the event JSON with leading
``log_id``, ``prev`` (previous log id of the symbol), ``prev_t`` (previous log id of the symbol + type),
``bus`` (the key prefix) and, when traced, ``tp`` fields. Readers of the channels should use
``decode_broadcast``: ``TradeEvent.from_json`` refuses the extra fields. The readers here remember an
event's trace context for ``bus.observability.tracing.context_of``.

Log entries come back as bytes from the bus's own client and as str from a decoding one (the CLI's,
some tests'); the readers here take either.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from bus.errors import EventValidationError
from bus.events.model import TradeEvent
from bus.observability import tracing

log = logging.getLogger(__name__)

#: log entry field holding the event type value (publish.lua: XADD ... type <value> event <json>)
TYPE_FIELD = "type"
#: log entry field holding the event JSON
EVENT_FIELD = "event"
#: log entry (and broadcast) field holding the publish's W3C traceparent; absent when it was not traced
TRACE_FIELD = "tp"
#: the same names as the bus client (decode_responses=False) returns them
TYPE_FIELD_B = TYPE_FIELD.encode()
EVENT_FIELD_B = EVENT_FIELD.encode()
TRACE_FIELD_B = TRACE_FIELD.encode()
#: log entry field holding the entry's number in its symbol's log (1, 2, ...; publish.lua's HINCRBY)
NUMBER_FIELD_B = b"n"
#: broadcast fields publish.lua puts before the event's own (``n``: the entry's number; ``tp``: when traced)
BROADCAST_META = ("log_id", "n", "prev", "prev_t", "bus", TRACE_FIELD)

Id = tuple[int, int]
#: what XRANGE returns on the bus client (decode_responses=False): [(log id, {field: value})]
LogEntries = list[tuple[bytes, dict[bytes, bytes]]]
MAX_SEQ = 2**64 - 1


def text(value: Any) -> str:
    """A Redis reply as str: bytes are UTF-8 decoded, anything else goes through ``str``."""
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def parse_id(raw: str | bytes) -> Id:
    ms, _, seq = text(raw).partition("-")
    return int(ms), int(seq or 0)


def checked_id(raw: Any, field: str) -> Id:
    """A broadcast's stream id field (bad input): a str ``ms-seq`` within 64 bits, else
    EventValidationError; nothing of another type or size reaches ``parse_id``."""
    if type(raw) is str and len(raw) <= 41:  # str methods, not a regex: this runs per broadcast
        ms, _, seq = raw.partition("-")
        if ms.isdigit() and seq.isdigit() and raw.isascii():
            i = int(ms), int(seq)
            if i[0] <= MAX_SEQ and i[1] <= MAX_SEQ:
                return i
    shown = raw[:48] if type(raw) is str else type(raw).__name__
    raise EventValidationError(f"{field} is not a stream id: {shown!r}", field=field)


def checked_prev(raw: Any, field: str) -> Id | None:
    """A broadcast's ``prev`` / ``prev_t``: a stream id, or "" (None) for the symbol's first event."""
    return None if raw == "" else checked_id(raw, field)


def checked_number(raw: Any) -> int | None:
    """A broadcast's ``n`` (its entry's number in the symbol's log), None when absent (older publishers)."""
    if raw is None:
        return None
    if type(raw) is int and 0 < raw <= MAX_SEQ:
        return raw
    raise EventValidationError(f"n is not an entry number: {type(raw).__name__}", field="n")


def entry_number(fields: Mapping[Any, Any]) -> int | None:
    """A log entry's number in its symbol's log; None for an entry logged before numbering (or a bad one)."""
    raw = fields.get(NUMBER_FIELD_B)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def format_id(i: Id) -> str:
    return f"{i[0]}-{i[1]}"


def entry_payload(fields: Mapping[Any, Any]) -> bytes:
    """The event JSON of a log entry, as bytes; EventValidationError when the entry has none."""
    raw = fields.get(EVENT_FIELD_B)
    if raw is None:
        raw = fields.get(EVENT_FIELD)
    if raw is None:
        raise EventValidationError(
            f"log entry without an {EVENT_FIELD!r} field: {sorted(map(text, fields))}", field=EVENT_FIELD
        )
    return raw if isinstance(raw, bytes) else str(raw).encode()


def entry_event(fields: Mapping[Any, Any]) -> TradeEvent:
    """The event of a log entry; EventValidationError when it is missing or unreadable."""
    payload = entry_payload(fields)
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise EventValidationError(f"not valid JSON: {e}", field="json", value=payload[:80]) from None
    event = TradeEvent.from_trusted_dict(obj)
    traced = entry_traceparent(fields)
    if traced is not None:
        tracing.carry(event, traced)
    return event


def entry_traceparent(fields: Mapping[Any, Any]) -> Any:
    """The traceparent a log entry carries (bytes or str), or None."""
    return fields.get(TRACE_FIELD_B) or fields.get(TRACE_FIELD)


def decode_entry(fields: Mapping[Any, Any]) -> TradeEvent | None:
    """The event of a log entry, or None (logged) when it is unreadable."""
    try:
        return entry_event(fields)
    except (EventValidationError, TypeError) as e:  # TypeError: a field of an unexpected JSON type
        log.error("unreadable log entry skipped: %s", e)
        return None


def decode_broadcast(raw: bytes | str) -> tuple[TradeEvent, dict[str, str]]:
    """Split a broadcast into (event, meta) where meta holds log_id/prev/prev_t/bus when present."""
    obj = orjson.loads(raw)
    if type(obj) is not dict:
        raise EventValidationError("a broadcast must be a JSON object", field="json")
    meta = {k: obj.pop(k) for k in BROADCAST_META if k in obj}
    event = TradeEvent.from_trusted_dict(obj) if meta else TradeEvent.from_dict(obj)
    if TRACE_FIELD in meta:
        tracing.carry(event, meta[TRACE_FIELD])
    return event, meta
