"""PaperVenue: fills, partial fills, rejects, SL/TP, the position snapshot, the random-walk feed."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bus.events.model import TradeEventType as T
from bus.executor.paper import PaperVenue, RandomWalkFeed, TradingVenue, VenueUpdate


def make_broker(**kw) -> tuple[PaperVenue, list[VenueUpdate]]:
    broker = PaperVenue(id_prefix="t-", **kw)
    seen: list[VenueUpdate] = []
    broker.add_listener(seen.append)
    broker.set_price("XAUUSD", "2000.00")
    return broker, seen


def kinds(updates: list[VenueUpdate]) -> list[T]:
    return [u.kind for u in updates]


def test_paper_broker_implements_the_protocol() -> None:
    assert isinstance(PaperVenue(), TradingVenue)


def test_market_order_fills_and_opens_a_position() -> None:
    broker, seen = make_broker()
    oid = broker.place_order("XAUUSD", "BUY", "0.10", sl="1990", tp="2010")
    assert kinds(seen) == [T.ORDER_CREATED, T.ORDER_FILLED, T.POSITION_OPENED, T.TRADE_EXECUTED]
    assert broker.order(oid)["status"] == "filled"
    opened = seen[2].data
    assert opened["entry_price"] == Decimal("2000.00") and opened["direction"] == "LONG"
    assert broker.positions() == [
        {
            "symbol": "XAUUSD",
            "position_id": opened["position_id"],
            "direction": "LONG",
            "volume": "0.10",
            "entry_price": "2000.00",
        }
    ]


def test_large_order_fills_in_chunks_one_per_price_update_at_average_price() -> None:
    broker, seen = make_broker(max_fill_volume="1")
    oid = broker.place_order("XAUUSD", "SELL", "2.5")
    assert kinds(seen) == [T.ORDER_CREATED, T.ORDER_PARTIALLY_FILLED]
    assert seen[1].data["fill_volume"] == Decimal("1") and seen[1].data["remaining_volume"] == Decimal("1.5")
    broker.set_price("XAUUSD", "2001.00")
    broker.set_price("XAUUSD", "2002.00")
    assert kinds(seen)[2:] == [
        T.ORDER_PARTIALLY_FILLED,
        T.ORDER_FILLED,
        T.POSITION_OPENED,
        T.TRADE_EXECUTED,
    ]
    filled = seen[3].data
    # (1*2000 + 1*2001 + 0.5*2002) / 2.5 = 2000.8
    assert filled["volume"] == Decimal("2.5") and filled["fill_price"] == Decimal("2000.8")
    assert broker.order(oid)["status"] == "filled"
    assert broker.positions()[0]["direction"] == "SHORT"


def test_limit_order_waits_for_its_price_and_can_be_modified() -> None:
    broker, seen = make_broker()
    oid = broker.place_order("XAUUSD", "BUY", "0.5", order_type="LIMIT", price="1995")
    assert kinds(seen) == [T.ORDER_CREATED] and seen[0].data["order_type"] == "BUY_LIMIT"
    broker.set_price("XAUUSD", "1996")
    assert broker.order(oid)["status"] == "pending"
    broker.modify_order(oid, price="1996.5")
    assert kinds(seen) == [
        T.ORDER_CREATED,
        T.ORDER_MODIFIED,
        T.ORDER_FILLED,
        T.POSITION_OPENED,
        T.TRADE_EXECUTED,
    ]
    assert seen[2].data["fill_price"] == Decimal("1996")


def test_cancel_of_a_partly_filled_order_opens_the_filled_part() -> None:
    broker, seen = make_broker(max_fill_volume="1")
    oid = broker.place_order("XAUUSD", "BUY", "3")
    broker.cancel_order(oid, "enough")
    assert kinds(seen) == [
        T.ORDER_CREATED,
        T.ORDER_PARTIALLY_FILLED,
        T.ORDER_CANCELLED,
        T.POSITION_OPENED,
        T.TRADE_EXECUTED,
    ]
    assert broker.positions()[0]["volume"] == "1"
    with pytest.raises(KeyError):
        broker.cancel_order(oid)


@pytest.mark.parametrize(
    ("symbol", "volume", "why"),
    [
        ("EURUSD", "1", "unknown symbol"),
        ("XAUUSD", "0", "invalid volume"),
        ("XAUUSD", "0.015", "invalid volume"),
        ("XAUUSD", "-1", "invalid volume"),
        ("XAUUSD", "2000", "invalid volume"),
        ("XAUUSD", "600", "insufficient margin"),
    ],
)
def test_rejects(symbol: str, volume: str, why: str) -> None:
    broker, seen = make_broker(balance=10_000, leverage=100)  # 600 lots * 2000 / 100 = 12,000 > 10,000
    oid = broker.place_order(symbol, "BUY", volume)
    assert kinds(seen) == [T.ORDER_REJECTED, T.TRADE_FAILED]
    assert why in seen[0].data["reason"]
    assert broker.order(oid)["status"] == "rejected" and broker.positions() == []


def test_margin_counts_open_positions() -> None:
    broker, seen = make_broker(balance=10_000, leverage=100)
    broker.place_order("XAUUSD", "BUY", "300")  # margin 6,000
    broker.place_order("XAUUSD", "BUY", "300")  # would need 6,000 more, only 4,000 free
    assert kinds(seen)[-2:] == [T.ORDER_REJECTED, T.TRADE_FAILED]
    assert "insufficient margin" in seen[-2].data["reason"]


@pytest.mark.parametrize(
    ("side", "price", "kind", "pnl"),
    [
        ("BUY", "1989", T.STOP_LOSS_HIT, "-11"),
        ("BUY", "2011", T.TAKE_PROFIT_HIT, "11"),
        ("SELL", "2011", T.STOP_LOSS_HIT, "-11"),
        ("SELL", "1989", T.TAKE_PROFIT_HIT, "11"),
    ],
)
def test_stop_loss_and_take_profit_trigger_on_price_updates(side: str, price: str, kind: T, pnl: str) -> None:
    broker, seen = make_broker()
    sl, tp = ("1990", "2010") if side == "BUY" else ("2010", "1990")
    broker.place_order("XAUUSD", side, "1", sl=sl, tp=tp)
    broker.set_price("XAUUSD", "2000.5")
    assert len(broker.positions()) == 1
    start = broker.balance
    broker.set_price("XAUUSD", price)
    assert kinds(seen)[-2:] == [kind, T.POSITION_CLOSED]
    closed = seen[-1].data
    assert closed["pnl"] == Decimal(pnl) and closed["exit_price"] == Decimal(price)
    assert broker.balance == start + Decimal(pnl) and broker.positions() == []


def test_partial_close_then_close_with_pnl_and_contract_size() -> None:
    broker, seen = make_broker(contract_sizes={"XAUUSD": 100})
    broker.place_order("XAUUSD", "BUY", "0.2")
    pid = broker.positions()[0]["position_id"]
    broker.set_price("XAUUSD", "2001")
    broker.close_position(pid, "0.05")
    part = seen[-1]
    assert part.kind is T.POSITION_PARTIALLY_CLOSED
    assert part.data["pnl"] == Decimal("5") and part.data["remaining_volume"] == Decimal("0.15")
    assert broker.positions()[0]["volume"] == "0.15"
    broker.set_price("XAUUSD", "1999")
    broker.close_position(pid)
    closed = seen[-1]
    assert closed.kind is T.POSITION_CLOSED
    assert closed.data["pnl"] == Decimal("-15") and closed.data["total_pnl"] == Decimal("-10")
    assert broker.balance == Decimal(100_000 - 10)
    with pytest.raises(KeyError):
        broker.close_position(pid)


def test_modify_position_to_a_crossed_level_triggers_at_once() -> None:
    broker, seen = make_broker()
    broker.place_order("XAUUSD", "BUY", "1")
    pid = broker.positions()[0]["position_id"]
    broker.modify_position(pid, sl="2000")
    assert kinds(seen)[-3:] == [T.POSITION_MODIFIED, T.STOP_LOSS_HIT, T.POSITION_CLOSED]


def test_random_walk_is_seeded_and_positive() -> None:
    a, b = PaperVenue(), PaperVenue()
    fa = RandomWalkFeed(a, {"XAUUSD": 2000, "BTCUSD": "45000"}, seed=7, volatility=0.01)
    fb = RandomWalkFeed(b, {"XAUUSD": 2000, "BTCUSD": "45000"}, seed=7, volatility=0.01)
    path = [fa.step() for _ in range(50)]
    assert path == [fb.step() for _ in range(50)]
    assert len({p["XAUUSD"] for p in path}) > 10
    assert all(px > 0 for p in path for px in p.values())
    assert a.prices == fa.prices


def test_a_failing_listener_does_not_break_the_account() -> None:
    broker, seen = make_broker()

    def boom(update: VenueUpdate) -> None:
        raise RuntimeError("listener bug")

    broker.add_listener(boom)
    broker.place_order("XAUUSD", "BUY", "1")
    assert len(broker.positions()) == 1 and kinds(seen)[-1] is T.TRADE_EXECUTED
