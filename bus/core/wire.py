"""The wire format: stream ids, log entries and broadcasts as publish.lua (and publish_many.lua) write them.

Log entry fields: ``type`` (event type value) and ``event`` (the event JSON). A broadcast is the event
JSON with leading ``log_id``, ``prev`` (previous log id of the symbol), ``prev_t`` (previous log id of
the symbol + type) and ``bus`` (the key prefix) fields. Readers of the channels should use
``decode_broadcast``: ``TradeEvent.from_json`` refuses the extra fields.
"""

from __future__ import annotations

import logging

import orjson

from bus.errors import EventValidationError
from bus.events.model import TradeEvent

log = logging.getLogger(__name__)

_trusted = TradeEvent._from_trusted_dict  # type: ignore[attr-defined]
Id = tuple[int, int]
#: what XRANGE returns on the bus client (decode_responses=False): [(log id, {field: value})]
LogEntries = list[tuple[bytes, dict[bytes, bytes]]]
MAX_SEQ = 2**64 - 1


def parse_id(raw: str | bytes) -> Id:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(i: Id) -> str:
    return f"{i[0]}-{i[1]}"


def decode_entry(fields: dict[bytes, bytes]) -> TradeEvent | None:
    """The event of a log entry, or None (logged) when it is unreadable."""
    raw = fields.get(b"event") or fields.get(b"e")
    try:
        return _trusted(orjson.loads(raw))  # type: ignore[arg-type]
    except (orjson.JSONDecodeError, EventValidationError, TypeError) as e:
        log.error("unreadable log entry skipped: %s", e)
        return None


def decode_broadcast(raw: bytes | str) -> tuple[TradeEvent, dict[str, str]]:
    """Split a broadcast into (event, meta) where meta holds log_id/prev/prev_t/bus when present."""
    obj = orjson.loads(raw)
    if type(obj) is not dict:
        raise EventValidationError("a broadcast must be a JSON object", field="json")
    meta = {k: obj.pop(k) for k in ("log_id", "prev", "prev_t", "bus") if k in obj}
    return (_trusted(obj) if meta else TradeEvent.from_dict(obj)), meta
