"""Risk rules against real Redis state; breaches raised exactly once per (rule, event)."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from bus.config import LoadEnvironmentVariables, RiskSettings
from bus.core.keys import Keys
from bus.core.state import apply_event
from bus.domain.risk import (
    RiskLimits,
    breach_event,
    check_event,
    daily_realised_pnl,
    evaluate,
    record_realised_pnl,
)
from bus.errors import ConfigError
from bus.events.model import TradeEvent, TradeEventType

pytestmark = pytest.mark.redis
SYM = "XAUUSD"


@pytest.fixture
def keys(key_prefix):
    return Keys(key_prefix)


def open_position(client, keys, symbol, position_id, volume):
    """Given: an active position in the state projection (and the symbol known, as publish does)."""
    event = TradeEvent.create_position_opened(symbol, position_id, 100.0, float(volume), "LONG")
    assert apply_event(client, keys, event)
    client.sadd(keys.symbols(), symbol)


class Published(list):
    """Collects what check_event publishes (the bus's publish is the production callable)."""

    def __call__(self, event):
        self.append(event)
        return event.event_id


def test_limits_from_dict_and_settings(monkeypatch):
    for var, value in {
        "TRADEBUS_RISK_MAX_ORDER_VOLUME": "5",
        "TRADEBUS_RISK_MAX_VOLUME_PER_SYMBOL": "XAUUSD=2, *=10",
        "TRADEBUS_RISK_MAX_OPEN_POSITIONS": "3",
        "TRADEBUS_RISK_MAX_DAILY_LOSS": "1000.50",
        "TRADEBUS_RISK_STOP_LOSS_REQUIRED": "true",
    }.items():
        monkeypatch.setenv(var, value)
    limits = RiskLimits.from_settings(LoadEnvironmentVariables(None).risk)
    assert limits.max_order_volume == Decimal(5)
    assert limits.symbol_volume_limit("XAUUSD") == Decimal(2)
    assert limits.symbol_volume_limit("EURUSD") == Decimal(10)
    assert limits.max_open_positions == 3 and limits.stop_loss_required
    assert limits.max_daily_loss == Decimal("1000.50")
    assert RiskLimits.from_settings(RiskSettings()) == RiskLimits()
    monkeypatch.setenv("TRADEBUS_RISK_MAX_ORDER_VOLUME", "lots")
    with pytest.raises(ConfigError, match="TRADEBUS_RISK_MAX_ORDER_VOLUME"):
        LoadEnvironmentVariables(None)
    with pytest.raises(ConfigError, match="unknown"):
        RiskLimits.from_dict({"max_leverage": 3})
    with pytest.raises(ConfigError, match="integer"):
        RiskLimits.from_dict({"max_open_positions": "2.5"})


def test_max_order_volume_and_stop_loss(redis_client, keys):
    limits = RiskLimits(max_order_volume=Decimal("1.5"), stop_loss_required=True)
    big = TradeEvent.create_order_created(SYM, "o1", "BUY", 2000.0, 2.0)
    assert sorted(b.rule for b in evaluate(redis_client, keys, big, limits)) == [
        "max_order_volume",
        "stop_loss_required",
    ]
    ok = TradeEvent.create_order_created(SYM, "o2", "BUY", 2000.0, 1.5, sl=1990.0)
    assert evaluate(redis_client, keys, ok, limits) == []
    modified = TradeEvent.create_order_modified(SYM, "o2", volume=1.6)
    assert [b.rule for b in evaluate(redis_client, keys, modified, limits)] == ["max_order_volume"]
    unguarded = TradeEvent.create_position_opened(SYM, "p1", 2000.0, 1.0, "LONG")
    assert [b.rule for b in evaluate(redis_client, keys, unguarded, limits)] == ["stop_loss_required"]


def test_volume_per_symbol_uses_state_and_ignores_own_position(redis_client, keys):
    open_position(redis_client, keys, SYM, "p1", "1.2")
    open_position(redis_client, keys, SYM, "p2", "0.5")
    open_position(redis_client, keys, "EURUSD", "e1", "50")  # other symbols do not count
    limits = RiskLimits(max_volume_per_symbol=Decimal("2"))
    opened = TradeEvent.create_position_opened(SYM, "p3", 2000.0, 0.4, "LONG")
    [b] = evaluate(redis_client, keys, opened, limits)
    assert (b.rule, b.value, b.limit) == ("max_volume_per_symbol", Decimal("2.1"), Decimal(2))
    # the same event after the state task applied it: same answer (own position not counted twice)
    open_position(redis_client, keys, SYM, "p3", "0.4")
    assert [x.value for x in evaluate(redis_client, keys, opened, limits)] == [Decimal("2.1")]
    # an order that closes a position does not add exposure
    closing = TradeEvent.create_order_created(SYM, "o9", "SELL", 2000.0, 1.0, position_id="p1")
    assert evaluate(redis_client, keys, closing, limits) == []
    new_order = TradeEvent.create_order_created(SYM, "o10", "BUY", 2000.0, 0.1)
    assert [x.value for x in evaluate(redis_client, keys, new_order, limits)] == [Decimal("2.2")]


def test_max_open_positions_counts_every_symbol(redis_client, keys):
    open_position(redis_client, keys, SYM, "p1", "1")
    open_position(redis_client, keys, "EURUSD", "e1", "1")
    limits = RiskLimits(max_open_positions=2)
    third = TradeEvent.create_position_opened("GBPUSD", "g1", 1.25, 1.0, "SHORT")
    [b] = evaluate(redis_client, keys, third, limits)
    assert (b.rule, b.value) == ("max_open_positions", Decimal(3))
    again = TradeEvent.create_position_opened(SYM, "p1", 2000.0, 1.0, "LONG")  # already counted
    assert evaluate(redis_client, keys, again, limits) == []


def test_daily_loss_counted_once_exactly(redis_client, keys):
    limits = RiskLimits(max_daily_loss=Decimal("100"))
    ts = "2024-05-01T10:00:00+00:00"
    losses = [TradeEvent.create_position_closed(SYM, f"p{i}", 2000.0, -33.1, timestamp=ts) for i in range(3)]
    for e in losses:
        assert evaluate(redis_client, keys, e, limits) == []
        assert evaluate(redis_client, keys, e, limits) == []  # a retry does not count twice
    assert daily_realised_pnl(redis_client, keys, "2024-05-01") == Decimal("-99.3")  # exact, no drift
    win = TradeEvent.create_position_partially_closed(SYM, "p9", 2001.0, 0.5, 0.2, timestamp=ts)
    assert evaluate(redis_client, keys, win, limits) == []
    loss = TradeEvent.create_position_closed(SYM, "p10", 1990.0, -1.0, timestamp=ts)
    [b] = evaluate(redis_client, keys, loss, limits)
    assert (b.rule, b.value) == ("max_daily_loss", Decimal("100.1"))
    other_day = TradeEvent.create_position_closed(SYM, "p11", 1990.0, -50, timestamp="2024-05-02T00:00:01Z")
    assert record_realised_pnl(redis_client, keys, other_day) == Decimal(-50)


def test_breach_published_once_per_rule_and_event(redis_client, keys):
    limits = RiskLimits(max_order_volume=Decimal(1), stop_loss_required=True)
    event = TradeEvent.create_order_created(SYM, "o1", "BUY", 2000.0, 3.0, correlation_id="corr-7")
    published = Published()
    first = check_event(redis_client, keys, event, limits, published)
    second = check_event(redis_client, keys, event, limits, published)  # retry / redelivery
    assert [b.raised for b in first] == [True, True]
    assert [b.raised for b in second] == [False, False]
    assert len(published) == 2
    assert {e.data["rule"] for e in published} == {"max_order_volume", "stop_loss_required"}
    for e in published:
        assert e.event_type is TradeEventType.RISK_LIMIT_BREACHED
        assert e.causation_id == event.event_id and e.correlation_id == "corr-7"
        assert e.data["order_id"] == "o1" and e.source == "tradebus.risk"
    vol = next(e for e in published if e.data["rule"] == "max_order_volume")
    assert (vol.data["limit"], vol.data["value"], vol.data["value_exact"]) == (1.0, 3.0, "3.0")
    markers = {keys.breach(rule, event.event_id) for rule in ("max_order_volume", "stop_loss_required")}
    assert redis_client.exists(*markers) == 2


def test_concurrent_checks_raise_once(redis_url, keys):
    import redis

    limits = RiskLimits(max_order_volume=Decimal(1))
    event = TradeEvent.create_order_created(SYM, "o1", "BUY", 2000.0, 3.0)
    published = Published()
    barrier = threading.Barrier(6)

    def worker():
        client = redis.Redis.from_url(redis_url)
        barrier.wait()
        check_event(client, keys, event, limits, published)
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(published) == 1


def test_failed_publish_is_not_marked(redis_client, keys):
    limits = RiskLimits(max_order_volume=Decimal(1))
    event = TradeEvent.create_order_created(SYM, "o1", "BUY", 2000.0, 3.0)

    def broken(_):
        raise ConnectionError("bus down")

    with pytest.raises(ConnectionError):
        check_event(redis_client, keys, event, limits, broken)
    published = Published()
    [b] = check_event(redis_client, keys, event, limits, published)  # the task's retry
    assert b.raised and len(published) == 1


def test_breach_event_id_is_deterministic(redis_client, keys):
    limits = RiskLimits(max_order_volume=Decimal(1))
    event = TradeEvent.create_order_created(SYM, "o1", "BUY", 2000.0, 3.0)
    [a] = evaluate(redis_client, keys, event, limits)
    [b] = evaluate(redis_client, keys, event, limits)
    assert breach_event(a, event).event_id == breach_event(b, event).event_id == a.breach_id


def test_non_trading_events_pass(redis_client, keys):
    limits = RiskLimits(max_order_volume=Decimal(0), stop_loss_required=True, max_open_positions=0)
    assert evaluate(redis_client, keys, TradeEvent.create_signal_validated(SYM, "s1"), limits) == []
    assert check_event(redis_client, keys, TradeEvent.create_risk_limit_breached(SYM, "r", 1, 2), limits) == []
