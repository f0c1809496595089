"""Checking an event's ``data`` against its type's payload model, with errors in tradebus's words.

The model decides what is valid; this module keeps the wire as it was: ``data`` stays the dict that
was given, in its key order, except for the values the model normalises (an integer id becomes text,
``buy`` becomes ``BUY``). Numbers keep their JSON form (``2000`` stays ``2000``, an integer stays exact), even
where the model converts them.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, to_jsonable_python

from bus.errors import EventValidationError
from bus.events.payloads import Explain, Payload, Quantity
from bus.events.rules import bad, check_finite

_NUMBERS = (int, float)


class PayloadRules:
    """What validation needs to know about one payload model, worked out once."""

    __slots__ = ("model", "fields", "required", "messages")

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model
        self.fields = model.model_fields
        self.required = frozenset(name for name, info in self.fields.items() if info.is_required())
        self.messages: dict[str, dict[str, str]] = {}
        for name, info in self.fields.items():
            for item in _metadata(info.metadata, info.annotation):
                if isinstance(item, Explain):
                    self.messages[name] = item.messages


def validate_data(rules: PayloadRules, event_type: str, raw: Any) -> dict[str, Any]:
    """The event's ``data`` if it satisfies ``rules``, normalised; else EventValidationError."""
    if raw is None:
        raw = {}
    elif not isinstance(raw, dict):
        raise bad("data", raw, "must be a JSON object (dict)")
    for field, value in raw.items():
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                raise bad(f"data.{field}", value, "numbers must be finite")
        elif kind is not str and kind is not int and value is not None:
            check_finite(value, f"data.{field}")  # NaN and inf do not survive JSON, wherever they are
        if type(field) is not str:
            raise bad("data", field, "keys must be strings")
    try:
        payload = rules.model.__pydantic_validator__.validate_python(raw)
    except ValidationError as e:
        raise _explain(rules, event_type, raw, e) from None
    data = dict(raw)
    values, fields = payload.__dict__, rules.fields
    for name, given in raw.items():
        if name in fields:
            value = values[name]
            if value is given or type(given) in _NUMBERS and type(value) in _NUMBERS:
                continue  # a number keeps its JSON form: 2**53 + 1 must not become a float
            if value != given:
                data[name] = to_jsonable_python(value)
    return data


def _explain(rules: PayloadRules, event_type: str, raw: dict[str, Any], e: ValidationError) -> EventValidationError:
    """The first failure in the order the fields were given (a missing required field last)."""
    position = {name: i for i, name in enumerate(raw)}

    def missing(err: ErrorDetails) -> bool:
        name = err["loc"][0] if err["loc"] else None
        return err["type"] == "missing" or (name in rules.required and raw.get(str(name)) is None)

    def rank(err: ErrorDetails) -> tuple[bool, int]:
        name = str(err["loc"][0]) if err["loc"] else ""
        return missing(err), position.get(name, len(position))

    err = min(e.errors(include_url=False), key=rank)
    loc = err["loc"]
    path = "data" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    field = str(loc[0]) if loc else ""
    if missing(err):
        return bad(path, None, f"required for {event_type} events")
    value = raw.get(field) if len(loc) == 1 else err.get("input")
    message = rules.messages.get(field, {}).get(err["type"]) or _lower_first(err["msg"])
    return bad(path, value, message)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _metadata(metadata: list[Any], annotation: Any) -> Iterator[Any]:
    """A field's annotation metadata, including what sits inside ``Annotated[...] | None``."""
    yield from metadata
    stack = [annotation]
    while stack:
        tp = stack.pop()
        if typing.get_origin(tp) is typing.Annotated:
            yield from tp.__metadata__
        stack.extend(typing.get_args(tp))


def fields_measuring(quantity: Quantity, model: type[BaseModel] = Payload) -> frozenset[str]:
    """Names of ``model``'s fields that hold a price (or a volume)."""
    return frozenset(
        name for name, info in model.model_fields.items() if quantity in list(_metadata(info.metadata, info.annotation))
    )
