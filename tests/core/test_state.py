"""The state projection (bus/core/state.py) against a real Redis: a table of event sequences."""

from __future__ import annotations

import pytest

from bus.core import state
from bus.core.keys import Keys
from bus.events.model import TradeEvent as T

S = "XAUUSD"


def created(v=0.3):
    return T.create_order_created(symbol=S, order_id="1", order_type="BUY", price=2000.5, volume=v, sl=1995.0)


def part(v, eid=None):
    return T.create_order_partially_filled(symbol=S, order_id="1", fill_price=2000.4, fill_volume=v,
                                           **({"event_id": eid} if eid else {}))  # fmt: skip


def filled(v=0.3):
    return T.create_order_filled(symbol=S, order_id="1", fill_price=2000.4, volume=v)


def cancelled():
    return T.create_order_cancelled(symbol=S, order_id="1", reason="user")


def rejected():
    return T.create_order_rejected(symbol=S, order_id="1", reason="margin")


def modified():
    return T.create_order_modified(symbol=S, order_id="1", price=2001.0, sl=1990.0)


P1 = part(0.1, "p1")
ORDER_CASES = [
    # (name, events, expected status, expected fields subset, open?)
    ("created", [created()], "pending", {"price": "2000.5", "volume": "0.3", "sl": "1995.0"}, True),
    (
        "partial fills add up exactly",
        [created(), part(0.1), part(0.2)],
        "partially_filled",
        {"filled_volume": "0.3"},
        True,
    ),
    (
        "filled",
        [created(), part(0.1), filled()],
        "filled",
        {"filled_volume": "0.3", "fill_price": "2000.4"},
        False,
    ),
    (
        "duplicate partial fill counted once",
        [created(), P1, P1, P1],
        "partially_filled",
        {"filled_volume": "0.1"},
        True,
    ),
    (
        "created after filled never pending again",
        [filled(), created()],
        "filled",
        {"price": "2000.5", "order_type": "BUY"},
        False,
    ),
    (
        "partial fill after filled changes nothing",
        [created(), filled(), part(0.1)],
        "filled",
        {"filled_volume": "0.3"},
        False,
    ),
    (
        "cancelled is terminal",
        [created(), cancelled(), filled(), created()],
        "cancelled",
        {"cancel_reason": "user"},
        False,
    ),
    (
        "rejected is terminal",
        [created(), rejected(), modified()],
        "rejected",
        {"reject_reason": "margin", "price": "2001.0"},
        False,
    ),
    ("first terminal wins", [filled(), cancelled()], "filled", {}, False),
    (
        "modified updates fields",
        [created(), modified()],
        "pending",
        {"price": "2001.0", "sl": "1990.0"},
        True,
    ),
    (
        "modified before created keeps the modified price",
        [modified(), created()],
        "pending",
        {"price": "2001.0", "volume": "0.3"},
        True,
    ),
    (
        "partial fill before created",
        [part(0.1), created()],
        "partially_filled",
        {"filled_volume": "0.1", "price": "2000.5"},
        True,
    ),
    (
        "many tiny fills, no float drift",
        [created(1.0)] + [part(0.1) for _ in range(10)],
        "partially_filled",
        {"filled_volume": "1"},
        True,
    ),
]


@pytest.mark.redis
@pytest.mark.parametrize(("name", "events", "status", "fields", "is_open"), ORDER_CASES,
                         ids=[c[0] for c in ORDER_CASES])  # fmt: skip
def test_order_state_machine(redis_client, key_prefix, name, events, status, fields, is_open):
    keys = Keys(key_prefix)
    for e in events:
        state.apply_event(redis_client, keys, e)
    order = state.get_order(redis_client, keys, S, "1")
    assert order is not None
    assert order["status"] == status
    assert order["order_id"] == "1" and order["symbol"] == S
    assert {k: order.get(k) for k in fields} == fields
    assert all(isinstance(v, str) for v in order.values())
    assert [o["order_id"] for o in state.open_orders(redis_client, keys, S)] == (["1"] if is_open else [])


def opened(v=1.0):
    return T.create_position_opened(symbol=S, position_id="67890", entry_price=2000.5, volume=v, direction="LONG")


def pclose(v, pnl, eid=None):
    return T.create_position_partially_closed(symbol=S, position_id="67890", exit_price=2010.0, closed_volume=v,
                                              pnl=pnl, **({"event_id": eid} if eid else {}))  # fmt: skip


def closed(pnl=95.0):
    return T.create_position_closed(symbol=S, position_id="67890", exit_price=2010.0, pnl=pnl)


def pmod():
    return T.create_position_modified(symbol=S, position_id="67890", sl=1999.0)


PC = pclose(0.1, 0.1, "pc1")
POSITION_CASES = [
    (
        "opened",
        [opened()],
        "active",
        {"volume": "1", "direction": "LONG", "entry_price": "2000.5"},
        True,
    ),
    (
        "partial closes add up exactly",
        [opened()] + [pclose(0.1, 0.1) for _ in range(3)],
        "active",
        {"volume": "0.7", "closed_volume": "0.3", "realized_pnl": "0.3"},
        True,
    ),
    (
        "duplicate partial close counted once",
        [opened(), PC, PC],
        "active",
        {"volume": "0.9", "closed_volume": "0.1"},
        True,
    ),
    (
        "closed",
        [opened(), pclose(0.5, -10.25), closed(20.5)],
        "closed",
        {"pnl": "20.5", "realized_pnl": "10.25", "exit_price": "2010.0"},
        False,
    ),
    (
        "opened after closed never active again",
        [closed(), opened()],
        "closed",
        {"direction": "LONG", "pnl": "95.0", "volume": "1"},
        False,
    ),
    (
        "modified after closed keeps it closed",
        [opened(), closed(), pmod()],
        "closed",
        {"sl": "1999.0"},
        False,
    ),
    (
        "second close is ignored",
        [opened(), closed(1.0), closed(2.0)],
        "closed",
        {"pnl": "1.0"},
        False,
    ),
    (
        "partial close before opened",
        [pclose(0.25, 1.0), opened()],
        "active",
        {"volume": "0.75"},
        True,
    ),
]


@pytest.mark.redis
@pytest.mark.parametrize(("name", "events", "status", "fields", "is_active"), POSITION_CASES,
                         ids=[c[0] for c in POSITION_CASES])  # fmt: skip
def test_position_state_machine(redis_client, key_prefix, name, events, status, fields, is_active):
    keys = Keys(key_prefix)
    for e in events:
        state.apply_event(redis_client, keys, e)
    pos = state.get_position(redis_client, keys, S, "67890")
    assert pos is not None and pos["status"] == status and pos["position_id"] == "67890"
    assert {k: pos.get(k) for k in fields} == fields
    active = state.active_positions(redis_client, keys, S)
    assert [p["position_id"] for p in active] == (["67890"] if is_active else [])


@pytest.mark.redis
def test_apply_twice_changes_nothing(redis_client, key_prefix):
    keys = Keys(key_prefix)
    events = [created(), part(0.1), filled()]
    assert [state.apply_event(redis_client, keys, e) for e in events] == [True, True, True]
    before = state.get_order(redis_client, keys, S, "1")
    assert [state.apply_event(redis_client, keys, e) for e in events] == [False, False, False]
    assert state.get_order(redis_client, keys, S, "1") == before


@pytest.mark.redis
def test_staged_and_direct_apply_give_identical_hashes(redis_client, key_prefix):
    events = [created(), part(0.1), modified(), part(0.05)]
    a, b = Keys(key_prefix + ":a"), Keys(key_prefix + ":b")
    for e in events:
        state.apply_event(redis_client, a, e)
    pipe = redis_client.pipeline(transaction=False)
    for e in events:
        assert state.stage_apply(pipe, b, e)
    pipe.execute()
    assert state.get_order(redis_client, a, S, "1") == state.get_order(redis_client, b, S, "1")


@pytest.mark.redis
def test_non_state_events_are_ignored(redis_client, key_prefix):
    keys = Keys(key_prefix)
    e = T.create_signal_generated(symbol=S, signal_id="s1", direction="LONG", strategy="m")
    assert state.apply_event(redis_client, keys, e) is False
    assert state.stage_apply(redis_client.pipeline(), keys, e) is False
    assert not list(redis_client.scan_iter(f"{key_prefix}:*"))


def test_decimal_text_has_no_exponent_or_drift():
    assert state._text("volume", 1e-05) == "0.00001"
    assert state._text("volume", 0.1 + 0.2) == "0.3"
    assert state._text("price", 2000.5) == "2000.5"
    assert state._text("flag", True) == "true"
    assert state._text("meta", {"a": 1}) == '{"a":1}'
