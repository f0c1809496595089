"""JSON Schema export: each type's schema accepts what its helper builds and refuses what the bus refuses.

The bad cases are today's rules (before the payload models), written out here: a schema that let one of
them through would be a contract looser than the bus. NaN and infinities are not listed: JSON has no
form for them, so no schema can see them (the bus refuses them before encoding).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import EventValidationError, SchemaVersionError, TradeEvent, TradeEventType
from bus.events.schema import json_schemas

WIRE = json.loads((Path(__file__).parent / "fixtures" / "wire_v1.json").read_text())["cases"]
SCHEMAS = json_schemas()
PRICES = ["price", "entry_price", "exit_price", "fill_price", "sl", "tp", "stop_loss", "take_profit", "entry"]
VOLUMES = ["volume", "fill_volume", "closed_volume", "filled_volume", "remaining_volume"]
IDS = ["order_id", "position_id", "trade_id", "signal_id"]


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(SCHEMAS[name], format_checker=jsonschema.FormatChecker())


def _refused_by_schemas(wire: dict[str, Any]) -> bool:
    """The type's own schema (when the type is known) and the envelope both refuse ``wire``."""
    own = SCHEMAS.get(wire.get("event_type"))  # type: ignore[arg-type]
    return (own is None or not _validator(wire["event_type"]).is_valid(wire)) and not _validator("envelope").is_valid(
        wire
    )


def _wire(event_type: str = "trade.executed", **data: Any) -> dict[str, Any]:
    base = {"order_id": "o1", "position_id": "p1"}
    return TradeEvent(event_type=event_type, symbol="XAUUSD", data={**base, **data}).to_dict()


def test_every_type_and_the_envelope_have_a_valid_2020_12_schema() -> None:
    assert set(SCHEMAS) == {"envelope", *(t.value for t in TradeEventType)}
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    union = SCHEMAS["envelope"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in union["oneOf"]] == [t.value for t in TradeEventType]
    assert SCHEMAS["order.created"]["properties"]["data"] == {"$ref": "#/$defs/OrderCreated"}
    assert SCHEMAS["order.created"]["$defs"]["OrderCreated"]["required"] == ["order_id"]
    assert SCHEMAS["trade.executed"]["$defs"]["Side"]["enum"] == ["BUY", "SELL"]


@pytest.mark.parametrize("case", WIRE, ids=[f"{c['helper'] or 'ctor'}-{c['kwargs']['event_id']}" for c in WIRE])
def test_schemas_accept_what_the_helpers_build(case: dict[str, Any]) -> None:
    wire = json.loads(case["encoded"])
    _validator(wire["event_type"]).validate(wire)
    _validator("envelope").validate(wire)
    others = [t.value for t in TradeEventType if t.value != wire["event_type"]]
    assert not any(_validator(t).is_valid(wire) for t in others)  # event_type tells the types apart


BAD_DATA = [
    *[(f, v) for f in PRICES + VOLUMES for v in (0, 0.0, -1.5, "12", True, [1.0])],
    ("pnl", "1"),
    ("pnl", False),
    *[(f, v) for f in IDS for v in ("", "a b", "a:b", "a*b", "x" * 129, 1.5, ["1"], True)],
    ("side", "UP"),
    ("side", 5),
    ("direction", "BUY"),
    ("order_type", "MARKET"),
]


@pytest.mark.parametrize(("field", "value"), BAD_DATA)
def test_schemas_refuse_the_data_the_bus_refuses(field: str, value: Any) -> None:
    for event_type in ("order.created", "position.closed", "trade.executed", "signal.generated"):
        wire = _wire(event_type)
        wire["data"][field] = value
        with pytest.raises(EventValidationError) as err:
            TradeEvent.from_dict(copy.deepcopy(wire))
        assert err.value.field == f"data.{field}"
        assert _refused_by_schemas(wire), (event_type, field, value)


@pytest.mark.parametrize("event_type", [t for t in TradeEventType if t.is_order or t.is_position])
def test_schemas_require_the_ids_the_bus_requires(event_type: TradeEventType) -> None:
    required = "order_id" if event_type.is_order else "position_id"
    for data in ({}, {required: None}):
        wire = _wire(event_type.value)
        wire["data"] = {k: v for k, v in wire["data"].items() if k != required} | data
        with pytest.raises(EventValidationError, match=required):
            TradeEvent.from_dict(copy.deepcopy(wire))
        assert _refused_by_schemas(wire)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nonsense", 1),
        ("data", [1, 2]),
        ("data", "x"),
        ("event_type", "order.teleported"),
        ("symbol", "XAU:USD"),
        ("symbol", ""),
        ("symbol", "X" * 65),
        ("symbol", 42),
        ("timestamp", "yesterday"),
        ("timestamp", 12),
        ("event_id", "has space"),
        ("event_id", "x" * 129),
        ("correlation_id", 5),
        ("source", ["s"]),
        ("schema_version", 99),
        ("schema_version", "2.0"),
        ("schema_version", "1"),
    ],
)
def test_schemas_refuse_the_envelopes_the_bus_refuses(field: str, value: Any) -> None:
    wire = _wire()
    wire[field] = value
    with pytest.raises(EventValidationError):
        TradeEvent.from_dict(copy.deepcopy(wire))
    assert _refused_by_schemas(wire)


def test_a_newer_minor_version_may_add_envelope_fields_another_major_may_not() -> None:
    newer = {**_wire(), "schema_version": "1.3", "trace_id": "t-1"}
    event = TradeEvent.from_dict(copy.deepcopy(newer))
    assert event.to_dict() == newer
    assert _validator("trade.executed").is_valid(newer) and _validator("envelope").is_valid(newer)
    same_minor = {**newer, "schema_version": "1.0"}
    with pytest.raises(EventValidationError, match="trace_id"):
        TradeEvent.from_dict(copy.deepcopy(same_minor))
    assert _refused_by_schemas(same_minor)
    other_major = {**newer, "schema_version": "2.0"}
    with pytest.raises(SchemaVersionError):
        TradeEvent.from_dict(copy.deepcopy(other_major))
    assert _refused_by_schemas(other_major)


def test_tradebus_schema_writes_one_file_per_type_the_envelope_and_asyncapi(tmp_path: Path) -> None:
    # Given a custom types module in the environment, as a deployment would set it
    tests = Path(__file__).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_", "TRADEBUS_"))}
    env.update(TRADEBUS_EVENT_TYPES_MODULE="tests.custom_event_types", PYTHONPATH=str(tests.parents[1]))
    cli = [sys.executable, "-m", "bus.cli", "--env-file", str(tmp_path / "none.env"), "schema"]
    # When the files are written
    out = tmp_path / "out"
    done = subprocess.run([*cli, "--output", str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    written = {p.name for p in out.iterdir()}
    # Then there is one per type (the custom ones too), the envelope and the AsyncAPI document
    types = [t.value for t in TradeEventType] + ["funding.rate_changed", "market.halted"]
    assert written == {"envelope.schema.json", "asyncapi.json", *(f"{t}.schema.json" for t in types)}
    funding = json.loads((out / "funding.rate_changed.schema.json").read_text())
    assert funding["$defs"]["FundingRateChanged"]["required"] == ["rate"]
    asyncapi = json.loads((out / "asyncapi.json").read_text())
    assert asyncapi["channels"]["funding.rate_changed"]["address"] == "trades:{symbol}:funding.rate_changed"
    # and printing one part gives the same document
    printed = subprocess.run([*cli, "--only", "asyncapi"], env=env, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == asyncapi


def _mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(good, good, good, bad)  # three good values for each bad one


_WIRE_INTS = st.integers(-(2**63), 2**63 - 1)  # what JSON encoders carry exactly
_ids = _mostly(st.text("abcXYZ019-_.#é", min_size=1, max_size=8), st.one_of(st.text(max_size=3), _WIRE_INTS, st.none()))
_positive = _mostly(
    st.floats(min_value=1e-12, max_value=1e15) | st.integers(1, 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False, max_value=0) | st.text(max_size=2) | st.booleans(),
)
_amount = _mostly(st.floats(allow_nan=False, allow_infinity=False) | _WIRE_INTS, st.text(max_size=2) | st.booleans())
_bad_choice = st.sampled_from(["", "UP", "buy", "MARKET", 1, True])
_fields = {
    **dict.fromkeys(IDS, _ids),
    **dict.fromkeys([*PRICES, *VOLUMES], _positive),
    "pnl": _amount,
    "side": _mostly(st.sampled_from(["BUY", "SELL"]), _bad_choice),
    "direction": _mostly(st.sampled_from(["LONG", "SHORT"]), _bad_choice),
    "order_type": _mostly(st.sampled_from(["BUY", "SELL", "BUY_LIMIT", "SELL_STOP"]), _bad_choice),
}
_data = st.lists(st.sampled_from(sorted(_fields)), max_size=4, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({name: _fields[name] for name in names})
)


@settings(max_examples=300, deadline=None)
@given(
    event_type=st.sampled_from([t.value for t in TradeEventType]),
    data=_data,
    extra=st.dictionaries(st.text(max_size=6).map(lambda k: f"x_{k}"), st.integers() | st.text(max_size=4), max_size=2),
)
def test_the_bus_and_the_schemas_agree_on_the_wire(
    event_type: str, data: dict[str, Any], extra: dict[str, Any]
) -> None:
    wire = _wire(event_type)
    wire["data"] = {**wire["data"], **data, **extra}  # keeps the ids order and position events need
    try:
        event = TradeEvent.from_dict(copy.deepcopy(wire))
    except EventValidationError:
        event = None
    if event is not None:  # what the bus writes, its schema accepts
        assert _validator(event_type).is_valid(event.to_dict()), event.to_dict()
    if _validator(event_type).is_valid(wire):  # what the schema accepts, the bus reads as it is
        assert event is not None and event.to_dict() == wire
