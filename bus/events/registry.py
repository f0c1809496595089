"""Every event type the bus knows, with its payload model: the 18 built-ins and the ones users register.

A custom type is registered in a module of the user's (``register_event_type`` at import time) named
by ``TRADEBUS_EVENT_TYPES_MODULE``; the bus factory, the Celery app and the CLI import that module
before they read an event or a routing table, so publishers, subscribers and workers agree on the types.
Registration is per process and idempotent (importing the module twice changes nothing).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from bus.errors import ConfigError, EventValidationError
from bus.events.payloads import BUILTIN_PAYLOADS
from bus.events.types import CUSTOM_TYPE_NAME, CUSTOM_TYPES, CustomEventType, EventType, TradeEventType
from bus.events.validation import PayloadRules

#: ``effect(pipeline, keys, event)``: queue the state changes of one event on a Redis pipeline (a
#: ``bus.core.keys.Keys`` names the keys). Runs again for a redelivered event, so it must be idempotent.
CustomEffect = Callable[[Any, Any, Any], None]

# Custom types live outside the built-ins' namespaces, so routes such as ``order.*`` keep their meaning.
_RESERVED_NAMESPACES = frozenset(t.value.partition(".")[0] for t in TradeEventType)


@dataclass(frozen=True)
class EventSpec:
    """One event type: its payload model and, for a custom type, its optional state effect."""

    event_type: EventType
    payload: type[BaseModel]
    effect: CustomEffect | None = None
    rules: PayloadRules = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", PayloadRules(self.payload))

    @property
    def builtin(self) -> bool:
        return isinstance(self.event_type, TradeEventType)


#: value -> spec; the built-ins first, then custom types in registration order
SPECS: dict[str, EventSpec] = {t.value: EventSpec(t, model) for t, model in BUILTIN_PAYLOADS.items()}
#: value -> type object, for the decoders' hot path (kept in step with SPECS)
TYPES_BY_VALUE: dict[str, EventType] = {value: spec.event_type for value, spec in SPECS.items()}


def register_event_type(name: str, payload: type[BaseModel], *, effect: CustomEffect | None = None) -> CustomEventType:
    """Make ``name`` (e.g. ``funding.rate_changed``) an event type whose ``data`` ``payload`` validates.

    The type gets a channel (``trades:{symbol}:{name}``), routes (``event_types`` may name it), the
    ``TradeEvent.create(name, symbol, **fields)`` helper and a schema in ``tradebus schema``. With an
    ``effect``, the state projection (inline ``apply_state`` and the ``tradebus.state.apply`` task)
    calls it for every event of the type. Subclass ``bus.events.Payload`` to inherit the standard field
    rules (ids, prices, volumes, sides). Registering the same name and model again returns the same type.
    """
    if not isinstance(name, str) or not CUSTOM_TYPE_NAME.fullmatch(name):
        raise EventValidationError(
            f"event type name {name!r}: 2-4 dotted lower-case words (letters, digits, '_'), e.g. funding.rate_changed",
            field="event_type",
            value=name,
        )
    if name.partition(".")[0] in _RESERVED_NAMESPACES:
        raise EventValidationError(
            f"event type name {name!r}: {sorted(_RESERVED_NAMESPACES)} are the built-in types' namespaces",
            field="event_type",
            value=name,
        )
    if not (isinstance(payload, type) and issubclass(payload, BaseModel)):
        raise EventValidationError(f"payload of {name!r} must be a pydantic model class, got {payload!r}")
    existing = SPECS.get(name)
    if existing is not None:
        if existing.payload is payload and existing.effect is effect:
            return CUSTOM_TYPES[name]
        raise EventValidationError(f"event type {name!r} is already registered with another payload or effect")
    event_type = CUSTOM_TYPES[name] = CustomEventType(name)
    SPECS[name] = EventSpec(event_type, payload, effect)
    TYPES_BY_VALUE[name] = event_type
    return event_type


def unregister_event_type(name: str) -> None:
    """Forget a custom type (tests, reloading plugins). Events of it no longer validate or route."""
    spec = SPECS.get(name)
    if spec is None or spec.builtin:
        raise EventValidationError(f"{name!r} is not a registered custom event type", field="event_type", value=name)
    del SPECS[name], TYPES_BY_VALUE[name], CUSTOM_TYPES[name]


def custom_specs() -> tuple[EventSpec, ...]:
    return tuple(spec for spec in SPECS.values() if not spec.builtin)


def load_event_types(modules: str | None) -> None:
    """Import the comma-separated modules of ``TRADEBUS_EVENT_TYPES_MODULE`` (they register types)."""
    for module in filter(None, (m.strip() for m in (modules or "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"TRADEBUS_EVENT_TYPES_MODULE: cannot import {module!r}: {e}") from None
