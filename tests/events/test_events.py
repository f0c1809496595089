"""TradeEvent: the 18 types, helpers, JSON round trip and every validation rule."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import EventValidationError, TradeEvent, TradeEventType
from bus.defaults import DEFAULT_MAX_EVENT_BYTES

EXPECTED_TYPES = {
    "ORDER_CREATED": "order.created",
    "ORDER_FILLED": "order.filled",
    "ORDER_PARTIALLY_FILLED": "order.partially_filled",
    "ORDER_CANCELLED": "order.cancelled",
    "ORDER_REJECTED": "order.rejected",
    "ORDER_MODIFIED": "order.modified",
    "POSITION_OPENED": "position.opened",
    "POSITION_CLOSED": "position.closed",
    "POSITION_MODIFIED": "position.modified",
    "POSITION_PARTIALLY_CLOSED": "position.partially_closed",
    "TRADE_EXECUTED": "trade.executed",
    "TRADE_FAILED": "trade.failed",
    "RISK_LIMIT_BREACHED": "risk.limit_breached",
    "STOP_LOSS_HIT": "risk.stop_loss_hit",
    "TAKE_PROFIT_HIT": "risk.take_profit_hit",
    "SIGNAL_GENERATED": "signal.generated",
    "SIGNAL_VALIDATED": "signal.validated",
    "SIGNAL_REJECTED": "signal.rejected",
}

# One call per helper: (helper name, required arguments, the event type it must produce).
HELPER_CALLS = [
    ("create_order_created", dict(order_id="1", order_type="BUY", price=2000.5, volume=0.1), "order.created"),
    ("create_order_filled", dict(order_id="1", fill_price=2000.4, volume=0.1), "order.filled"),
    (
        "create_order_partially_filled",
        dict(order_id="1", fill_price=2000.4, fill_volume=0.05),
        "order.partially_filled",
    ),
    ("create_order_cancelled", dict(order_id="1", reason="user"), "order.cancelled"),
    ("create_order_rejected", dict(order_id="1", reason="no margin"), "order.rejected"),
    ("create_order_modified", dict(order_id="1", price=2001.0), "order.modified"),
    (
        "create_position_opened",
        dict(position_id="p", entry_price=2000.5, volume=0.1, direction="LONG"),
        "position.opened",
    ),
    ("create_position_closed", dict(position_id="p", exit_price=2010.0, pnl=95.0), "position.closed"),
    ("create_position_modified", dict(position_id="p", sl=1990.0), "position.modified"),
    (
        "create_position_partially_closed",
        dict(position_id="p", exit_price=2005.0, closed_volume=0.05, pnl=-2.5),
        "position.partially_closed",
    ),
    ("create_trade_executed", dict(trade_id="t", side="SELL", price=45000.0, volume=0.5), "trade.executed"),
    ("create_trade_failed", dict(reason="timeout"), "trade.failed"),
    ("create_risk_limit_breached", dict(rule="max_volume", limit=1.0, value=1.5), "risk.limit_breached"),
    ("create_stop_loss_hit", dict(position_id="p", price=1995.0), "risk.stop_loss_hit"),
    ("create_take_profit_hit", dict(position_id="p", price=2010.0), "risk.take_profit_hit"),
    ("create_signal_generated", dict(signal_id="s", direction="SHORT", strategy="momentum"), "signal.generated"),
    ("create_signal_validated", dict(signal_id="s"), "signal.validated"),
    ("create_signal_rejected", dict(signal_id="s", reason="stale"), "signal.rejected"),
]


def make(event_type: str = "trade.executed", **kw: object) -> TradeEvent:
    kw.setdefault("symbol", "XAUUSD")
    return TradeEvent(event_type=event_type, **kw)


def test_exactly_the_18_types_with_their_channel_suffixes() -> None:
    assert {m.name: m.value for m in TradeEventType} == EXPECTED_TYPES


def test_every_type_has_a_helper() -> None:
    produced = {expected for _, _, expected in HELPER_CALLS}
    assert produced == set(EXPECTED_TYPES.values())
    for member in TradeEventType:
        assert hasattr(TradeEvent, f"create_{member.name.lower()}"), member


@pytest.mark.parametrize(("helper", "args", "expected"), HELPER_CALLS, ids=[c[0] for c in HELPER_CALLS])
def test_helper_builds_its_type_keeps_extras_in_data_and_round_trips(helper: str, args: dict, expected: str) -> None:
    event = getattr(TradeEvent, helper)(symbol="XAUUSD", note="extra", correlation_id="c-1", source="tests", **args)
    assert event.event_type.value == expected
    assert event.symbol == "XAUUSD"
    assert event.data["note"] == "extra"  # extra keyword arguments land in data
    assert event.correlation_id == "c-1" and event.source == "tests"  # envelope fields do not
    assert "correlation_id" not in event.data
    for key, value in args.items():
        assert event.data[key] == value
    assert TradeEvent.from_json(event.to_json()) == event
    assert TradeEvent.from_json(event.to_json().encode()) == event


def test_envelope_defaults() -> None:
    a, b = make(), make()
    assert a.event_id != b.event_id and len(a.event_id) >= 16
    assert a.schema_version == 1
    assert a.timestamp.endswith("+00:00")
    assert set(orjson.loads(a.to_json())) == {
        "event_id",
        "event_type",
        "symbol",
        "timestamp",
        "data",
        "correlation_id",
        "causation_id",
        "source",
        "schema_version",
    }


def test_naive_timestamp_is_utc_and_aware_ones_are_converted() -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5, 600000)
    assert make(timestamp=naive.isoformat()).timestamp == "2026-01-02T03:04:05.600000+00:00"
    assert make(timestamp=naive).timestamp == "2026-01-02T03:04:05.600000+00:00"
    plus2 = datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert make(timestamp=plus2).timestamp == "2026-01-02T03:04:05+00:00"
    assert make(timestamp="2026-01-02T03:04:05Z").timestamp == "2026-01-02T03:04:05+00:00"


def test_event_type_accepts_member_value_and_name() -> None:
    assert make("order.filled", data={"order_id": "1"}).event_type is TradeEventType.ORDER_FILLED
    assert make("ORDER_FILLED", data={"order_id": "1"}).event_type is TradeEventType.ORDER_FILLED
    assert make(TradeEventType.ORDER_FILLED, data={"order_id": "1"}).event_type is TradeEventType.ORDER_FILLED


def test_unknown_event_type_lists_the_valid_ones() -> None:
    with pytest.raises(EventValidationError) as err:
        make("order.teleported")
    assert err.value.field == "event_type"
    assert "order.teleported" in str(err.value)
    for value in EXPECTED_TYPES.values():
        assert value in str(err.value)


@pytest.mark.parametrize(
    "symbol",
    [
        "",
        "XAU:USD",
        "XAU*",
        "XAU?",
        "XAU[1]",
        "XAU]",
        "XAU USD",
        "XAU\tUSD",
        "XAU\nUSD",
        "XAU\x00",
        "XAU\x7f",
        "{XAU}",
        "X" * 65,
        None,
        42,
    ],
)
def test_symbols_that_would_break_a_channel_or_key_are_refused(symbol: object) -> None:
    with pytest.raises(EventValidationError) as err:
        make(symbol=symbol)
    assert err.value.field == "symbol"


def test_symbol_limits_accept_ordinary_names() -> None:
    for ok in ["XAUUSD", "BTC-USD", "ES_F.2026", "X" * 64, "eur/usd"]:
        assert make(symbol=ok).symbol == ok


@pytest.mark.parametrize(
    "field", ["price", "entry_price", "exit_price", "fill_price", "sl", "tp", "volume", "fill_volume", "closed_volume"]
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0, 0.0, -1.5, "12", True])
def test_prices_and_volumes_must_be_finite_positive_numbers(field: str, value: object) -> None:
    with pytest.raises(EventValidationError) as err:
        make(data={field: value})
    assert err.value.field == f"data.{field}"
    assert field in str(err.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, math.nan], {"deep": {"er": math.inf}}])
def test_every_number_anywhere_in_data_must_be_finite(value: object) -> None:
    with pytest.raises(EventValidationError, match="finite"):
        make(data={"anything": value})


def test_pnl_may_be_negative_but_must_be_a_finite_number() -> None:
    assert make(data={"pnl": -12.5}).data["pnl"] == -12.5
    for bad in (math.nan, "1"):
        with pytest.raises(EventValidationError, match="data.pnl"):
            make(data={"pnl": bad})


@pytest.mark.parametrize("event_type", [t.value for t in TradeEventType if t.value.startswith("order.")])
def test_order_events_need_an_order_id(event_type: str) -> None:
    with pytest.raises(EventValidationError, match="order_id"):
        make(event_type, data={"price": 1.0})
    assert make(event_type, data={"order_id": 12345}).data["order_id"] == "12345"


@pytest.mark.parametrize("event_type", [t.value for t in TradeEventType if t.value.startswith("position.")])
def test_position_events_need_a_position_id(event_type: str) -> None:
    with pytest.raises(EventValidationError, match="position_id"):
        make(event_type, data={})


@pytest.mark.parametrize(
    ("field", "bad", "good"),
    [
        ("side", "UP", "buy"),
        ("direction", "BUY", "short"),
        ("order_type", "MARKET", "sell_limit"),
    ],
)
def test_side_and_direction_come_from_a_fixed_set(field: str, bad: str, good: str) -> None:
    with pytest.raises(EventValidationError) as err:
        make(data={field: bad})
    assert err.value.field == f"data.{field}" and bad in str(err.value)
    assert make(data={field: good}).data[field] == good.upper()


@pytest.mark.parametrize("bad_id", ["", "a b", "a:b", "x" * 129, 1.5, ["1"]])
def test_ids_must_be_usable_in_key_names(bad_id: object) -> None:
    with pytest.raises(EventValidationError, match="order_id"):
        make("order.created", data={"order_id": bad_id})


def test_encoded_size_limit_is_enforced_and_configurable() -> None:
    big = make(data={"blob": "x" * DEFAULT_MAX_EVENT_BYTES})
    with pytest.raises(EventValidationError) as err:
        big.encode()
    assert err.value.field == "size" and str(DEFAULT_MAX_EVENT_BYTES) in str(err.value)
    assert len(big.encode(max_bytes=2 * DEFAULT_MAX_EVENT_BYTES)) > DEFAULT_MAX_EVENT_BYTES
    with pytest.raises(EventValidationError):
        make(data={"blob": "x" * 300}).encode(max_bytes=256)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"nonsense": 1}, "nonsense"),
        ({"data": [1, 2]}, "data"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": 12}, "timestamp"),
        ({"correlation_id": 5}, "correlation_id"),
        ({"event_id": "has space"}, "event_id"),
        ({"schema_version": 99}, "schema_version"),
    ],
)
def test_other_bad_fields_name_themselves(fields: dict, field: str) -> None:
    with pytest.raises(EventValidationError) as err:
        make(**fields)
    assert field in str(err.value)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[1,2]",
        b'{"event_type": "order.created"}',
        b'{"event_type":"trade.executed","symbol":"X","extra_field":1}',
        b'{"event_type":"trade.executed","symbol":"X","source":7}',
        "",  # str input too (it used to fail with TypeError building the error)
        "not json",
    ],
)
def test_from_json_rejects_malformed_input_with_our_error(raw: bytes | str) -> None:
    with pytest.raises(EventValidationError):
        TradeEvent.from_json(raw)


def test_validation_error_is_a_value_error_and_events_are_immutable() -> None:
    assert issubclass(EventValidationError, ValueError)
    event = make()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        event.symbol = "OTHER"  # type: ignore[misc]


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
symbols = st.text(
    alphabet=st.characters(blacklist_characters=":*?[]{}\\", blacklist_categories=("Cc", "Zs", "Zl", "Zp", "Cs")),
    min_size=1,
    max_size=64,
)


@given(
    event_type=st.sampled_from(list(TradeEventType)),
    symbol=symbols,
    extra=st.dictionaries(st.text(max_size=10).map(lambda k: f"x_{k}"), json_values, max_size=5),
    correlation_id=st.none() | st.text(max_size=20),
    when=st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.none() | st.just(UTC)
    ),
)
def test_every_event_round_trips_exactly_through_json(event_type, symbol, extra, correlation_id, when) -> None:
    data = {"order_id": "o1", "position_id": "p1", **extra}
    event = TradeEvent(event_type=event_type, symbol=symbol, data=data, correlation_id=correlation_id, timestamp=when)
    again = TradeEvent.from_json(event.to_json())
    assert again == event
    assert again.to_json() == event.to_json()
    assert TradeEvent.from_json(event.encode(max_bytes=None)) == event
