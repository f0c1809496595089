"""JSON Schema of the events on the wire: one per event type, and the envelope (any type, by ``event_type``).

``definitions(prefix)`` gives every named schema with references under ``prefix``: the payload models'
schemas (pydantic's), the shared envelope parts, and one schema per event type named by its value
(``order.created``), whose ``data`` is the type's payload. The AsyncAPI document puts them under
``#/components/schemas/``; ``event_schema`` and ``envelope_schema`` are standalone documents (``$defs``).

Envelope fields a newer MINOR version adds are allowed when ``schema_version`` says so (``closed``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic.json_schema import models_json_schema

from bus.defaults import MAX_SYMBOL_LENGTH, SCHEMA_VERSION
from bus.events.registry import SPECS, EventSpec
from bus.events.rules import CANONICAL_UTC, EVENT_ID
from bus.events.versions import SCHEMA_MINOR

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ENVELOPE_FIELDS = (
    "event_id",
    "event_type",
    "symbol",
    "timestamp",
    "data",
    "correlation_id",
    "causation_id",
    "source",
    "schema_version",
)
_OLDER_MINORS = "|".join(str(m) for m in range(SCHEMA_MINOR + 1))
# what bus.core.keys.validate_symbol refuses: separators, globs, braces, backslash, spaces, control characters
_SYMBOL = r"^[^:*?\[\]{}\\\s\x00-\x1f\x7f]+$"


def _parts() -> dict[str, Any]:
    """The envelope's shared parts, referenced from every event type's schema."""
    return {
        "EventId": {
            "type": "string",
            "pattern": f"^{EVENT_ID.pattern}$",
            "description": "Unique per event (a uuid4 hex unless the producer chose one); at most 128 characters.",
        },
        "Symbol": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_SYMBOL_LENGTH,
            "pattern": _SYMBOL,
            "description": "The instrument, e.g. XAUUSD; part of channel and key names.",
        },
        "Timestamp": {
            "type": "string",
            "format": "date-time",
            "pattern": f"^{CANONICAL_UTC.pattern}$",
            "description": "When the event happened: ISO-8601 in UTC with a +00:00 offset.",
        },
        "OptionalText": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "SchemaVersion": {
            "anyOf": [
                {"const": SCHEMA_VERSION},
                {"type": "string", "pattern": rf"^{SCHEMA_VERSION}\.(0|[1-9][0-9]*)$"},
            ],
            "description": (
                f"The envelope's version: the integer MAJOR, or 'MAJOR.MINOR' from a newer MINOR. This schema is "
                f"{SCHEMA_VERSION}.{SCHEMA_MINOR}; a newer MINOR only adds fields, which readers keep."
            ),
        },
    }


def _event(spec: EventSpec, payload_ref: str, ref: str) -> dict[str, Any]:
    value = spec.event_type.value
    return {
        "title": f"{value} event",
        "description": (spec.payload.__doc__ or "").strip() or f"A {value} event.",
        "type": "object",
        "properties": {
            "event_id": {"$ref": f"{ref}EventId"},
            "event_type": {"type": "string", "const": value},
            "symbol": {"$ref": f"{ref}Symbol"},
            "timestamp": {"$ref": f"{ref}Timestamp"},
            "data": {"$ref": payload_ref},
            "correlation_id": {"$ref": f"{ref}OptionalText", "description": "Shared by the events of one flow."},
            "causation_id": {"$ref": f"{ref}OptionalText", "description": "The event_id of the event that caused it."},
            "source": {"$ref": f"{ref}OptionalText", "description": "The producing service."},
            "schema_version": {"$ref": f"{ref}SchemaVersion"},
        },
        "required": list(ENVELOPE_FIELDS),
    }


def definitions(ref: str) -> dict[str, dict[str, Any]]:
    """Every named schema, references written as ``{ref}{name}`` (e.g. ``#/components/schemas/``)."""
    specs = list(SPECS.values())
    keys, found = models_json_schema([(s.payload, "validation") for s in specs], ref_template=ref + "{model}")
    out = {**found.get("$defs", {}), **_parts()}
    for spec in specs:
        out[spec.event_type.value] = _event(spec, keys[(spec.payload, "validation")]["$ref"], ref)
    return out


def closed(schema: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """``schema`` refusing properties outside ``fields``, unless the event is from a newer MINOR version."""
    return {
        **schema,
        "if": {
            "required": ["schema_version"],
            "properties": {
                "schema_version": {"type": "string", "pattern": rf"^{SCHEMA_VERSION}\.(?!({_OLDER_MINORS})$)[0-9]+$"}
            },
        },
        "else": {"propertyNames": {"enum": list(fields)}},
    }


def union(ref: str) -> dict[str, Any]:
    """Any event: one of the event types' schemas, told apart by ``event_type``."""
    return {
        "title": "TradeEvent",
        "description": "A tradebus event; event_type names its type and the schema of its data.",
        "oneOf": [{"$ref": f"{ref}{value}"} for value in SPECS],
        "discriminator": "event_type",
    }


def event_schema(event_type: str) -> dict[str, Any]:
    """A standalone JSON Schema (2020-12) of one event type's events."""
    defs = definitions("#/$defs/")
    root = closed(defs.pop(event_type), ENVELOPE_FIELDS)
    return {"$schema": DIALECT, "$id": f"urn:tradebus:event:{event_type}", **root, "$defs": _reachable(root, defs)}


def envelope_schema() -> dict[str, Any]:
    """A standalone JSON Schema (2020-12) of any event."""
    defs = definitions("#/$defs/")
    root = closed(union("#/$defs/"), ENVELOPE_FIELDS)
    return {"$schema": DIALECT, "$id": "urn:tradebus:event", **root, "$defs": _reachable(root, defs)}


def json_schemas() -> dict[str, dict[str, Any]]:
    """``{"envelope": ..., "<event type>": ...}`` for every known type, custom ones included."""
    return {"envelope": envelope_schema(), **{value: event_schema(value) for value in SPECS}}


def _reachable(root: dict[str, Any], defs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The definitions ``root`` references, directly or through each other."""
    seen: dict[str, dict[str, Any]] = {}
    todo = list(_refs(root))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen[name] = defs[name]
            todo.extend(_refs(defs[name]))
    return dict(sorted(seen.items()))


def _refs(node: Any) -> Iterator[str]:
    """Names of the ``#/$defs/`` references anywhere in ``node``."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            yield ref.removeprefix("#/$defs/")
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)
