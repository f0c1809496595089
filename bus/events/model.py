"""TradeEvent: the envelope every part of tradebus passes around, and its validation rules."""

from __future__ import annotations

from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bus.defaults import DEFAULT_MAX_EVENT_BYTES, SCHEMA_VERSION
from bus.errors import EventValidationError
from bus.events.factories import EventHelpers
from bus.events.payloads import Quantity
from bus.events.registry import SPECS, TYPES_BY_VALUE
from bus.events.rules import EVENT_ID, bad, new_id, normalise_timestamp, now, validate_symbol
from bus.events.types import ORDER_TYPES, POSITION_TYPES, EventType, TradeEventType
from bus.events.validation import fields_measuring, validate_data
from bus.events.versions import check_version, is_newer_minor

# the projection stores these as exact decimals
PRICE_FIELDS = fields_measuring(Quantity.PRICE)
VOLUME_FIELDS = fields_measuring(Quantity.VOLUME)

# the fast path for events this bus wrote itself (TradeEvent.from_trusted_dict)
_TYPE_BY_VALUE = TYPES_BY_VALUE  # custom types join it when registered
_KNOWN_SYMBOLS: set[str] = set()  # symbols already validated once (bounded below)
_new = object.__new__
_set = object.__setattr__


class TradeEvent(EventHelpers, BaseModel):
    """One trade event. Immutable; build it with a ``create_*`` helper or the constructor."""

    # Unknown envelope fields are refused by ``_validate`` unless a newer MINOR version sent them.
    model_config = ConfigDict(frozen=True, extra="allow", use_enum_values=False)

    event_type: EventType
    symbol: str
    timestamp: str = Field(default_factory=now)
    data: dict[str, Any] = Field(default_factory=dict)
    correlation_id: str | None = None
    causation_id: str | None = None
    source: str | None = None
    event_id: str = Field(default_factory=new_id)
    schema_version: int | str = SCHEMA_VERSION

    #: longest encoded form publish() accepts unless the bus is configured otherwise
    max_bytes: ClassVar[int] = DEFAULT_MAX_EVENT_BYTES

    def __init__(self, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as e:
            raise _from_pydantic(e, fields) from None

    # --- validation: one pass over the raw fields (one Python call keeps decoding cheap) ----------

    @model_validator(mode="before")
    @classmethod
    def _validate(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            raise bad("event", raw, "must be a mapping of fields")
        v = dict(raw)
        event_type = v["event_type"] = TradeEventType.parse(v.get("event_type"))
        if "symbol" not in v:
            raise bad("symbol", None, "field required")
        validate_symbol(v["symbol"])
        ts = v.get("timestamp")
        v["timestamp"] = now() if ts in ("", None) else normalise_timestamp(ts)
        eid = v.get("event_id")
        if eid in ("", None):
            v["event_id"] = new_id()
        elif not isinstance(eid, str) or not EVENT_ID.fullmatch(eid):
            raise bad(
                "event_id",
                eid,
                "must be a string of at most 128 characters without ':', '|' or spaces",
            )
        version = v["schema_version"] = check_version(v.get("schema_version", SCHEMA_VERSION))
        unknown = v.keys() - _FIELDS
        if unknown and not is_newer_minor(version):
            name = sorted(unknown)[0]
            raise bad(name, v[name], "unknown field (put custom values in data)")
        v["data"] = validate_data(SPECS[event_type.value].rules, event_type.value, v.get("data"))
        return v

    # --- JSON ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        extra = self.__pydantic_extra__
        fields = {
            "event_id": self.event_id,
            "event_type": self.event_type.value,
            "symbol": self.symbol,
            "timestamp": self.timestamp,
            "data": self.data,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "source": self.source,
            "schema_version": self.schema_version,
        }
        if extra:  # envelope fields of a newer MINOR version, passed on as received
            fields.update(extra)
        return fields

    def to_json(self) -> str:
        return self.encode(max_bytes=None).decode()

    def encode(self, max_bytes: int | None = DEFAULT_MAX_EVENT_BYTES) -> bytes:
        """UTF-8 JSON bytes; refused with EventValidationError when longer than ``max_bytes``."""
        raw = orjson.dumps(self.to_dict())
        if max_bytes is not None and len(raw) > max_bytes:
            raise EventValidationError(
                f"event {self.event_id} encodes to {len(raw)} bytes; the limit is {max_bytes}",
                field="size",
                value=len(raw),
            )
        return raw

    @classmethod
    def from_json(cls, raw: str | bytes | bytearray | memoryview) -> TradeEvent:
        """Inverse of ``to_json``; takes str or bytes. Bad input raises EventValidationError."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            head = raw[:80] if isinstance(raw, str) else bytes(raw[:80])  # bytes(str) would raise TypeError
            raise EventValidationError(f"not valid JSON: {e}", field="json", value=head) from None
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: Any) -> TradeEvent:
        """Build from a decoded JSON object. Same rules as the constructor, without pydantic's
        second pass: decoding sits on the subscriber's and the workers' hot path."""
        if not isinstance(obj, dict):
            raise EventValidationError(f"an event must be a JSON object, got {type(obj).__name__}", field="json")
        # pydantic types a decorated validator as its descriptor proxy; on the class it is the classmethod
        v = cls._validate(obj)  # type: ignore[operator]
        for name in _OPTIONAL_STR:
            value = v.get(name)
            if value is not None and type(value) is not str:
                raise bad(name, value, "must be a string or null")
            v[name] = value
        extra = {name: v[name] for name in obj if name not in _FIELDS} or None
        return cls._assemble({f: v[f] for f in _FIELD_ORDER}, set(obj), extra)

    @classmethod
    def from_trusted_dict(cls, obj: Any) -> TradeEvent:
        """Build a TradeEvent from a dict produced by ``TradeEvent.encode`` (our own log / broadcast).

        Checks the envelope's structure and types (field set, event type, symbol, id and string fields,
        schema version, order/position id present) but skips re-normalising the timestamp and
        re-checking every number in ``data``: those were validated before the event was published.
        About 10x cheaper than ``TradeEvent(**obj)``. Raises EventValidationError on any mismatch.
        """
        if type(obj) is not dict or not obj.keys() <= _FIELDS:  # a subset test builds no set
            return cls.from_dict(obj)  # full path: names the offending field
        try:
            event_type = _TYPE_BY_VALUE[obj["event_type"]]
            symbol = obj["symbol"]
            timestamp = obj["timestamp"]
            data = obj["data"]
            event_id = obj["event_id"]
        except (KeyError, TypeError):
            return cls.from_dict(obj)
        if type(symbol) is not str or symbol not in _KNOWN_SYMBOLS:
            validate_symbol(symbol)
            if len(_KNOWN_SYMBOLS) < 10_000:
                _KNOWN_SYMBOLS.add(symbol)
        if (
            type(timestamp) is not str
            or type(data) is not dict
            or type(event_id) is not str
            or not EVENT_ID.fullmatch(event_id)
            or obj.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION
            or (event_type in ORDER_TYPES and not data.get("order_id"))
            or (event_type in POSITION_TYPES and not data.get("position_id"))
        ):
            return cls.from_dict(obj)
        for k in _OPTIONAL_STR:
            v = obj.get(k)
            if v is not None and type(v) is not str:
                return cls.from_dict(obj)
        return cls._assemble(
            {
                "event_type": event_type,
                "symbol": symbol,
                "timestamp": timestamp,
                "data": data,
                "correlation_id": obj.get("correlation_id"),
                "causation_id": obj.get("causation_id"),
                "source": obj.get("source"),
                "event_id": event_id,
                "schema_version": SCHEMA_VERSION,
            },
            set(obj),
        )

    @classmethod
    def _assemble(cls, fields: dict[str, Any], fields_set: set[str], extra: dict[str, Any] | None = None) -> TradeEvent:
        """An event from already-validated fields, without pydantic's second pass (hot path)."""
        event = _new(cls)
        _set(event, "__dict__", fields)
        _set(event, "__pydantic_fields_set__", fields_set)
        _set(event, "__pydantic_extra__", extra)
        _set(event, "__pydantic_private__", None)
        return event


_FIELD_ORDER = tuple(TradeEvent.model_fields)
_FIELDS = frozenset(_FIELD_ORDER)
_OPTIONAL_STR = ("correlation_id", "causation_id", "source")


def _from_pydantic(e: ValidationError, fields: dict[str, Any]) -> EventValidationError:
    """Turn pydantic's error into ours, naming the first offending field and its value."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "event"
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, EventValidationError):
        return cause
    value = err.get("input")
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "field required"
        value = None
    return EventValidationError(f"{loc}={value!r}: {msg}", field=loc, value=value)
