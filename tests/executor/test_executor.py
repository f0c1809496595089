"""ExecutorBuilder / OrderExecutor with the PaperVenue against a real Redis: events, chains, kill switch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bus.core.keys import Keys
from bus.errors import ConfigError
from bus.events.model import TradeEvent
from bus.events.model import TradeEventType as T
from bus.executor import (
    ExecutorBuilder,
    ExecutorConfig,
    TradeExecutor,
    engage_kill_switch,
    kill_switches,
    release_kill_switch,
)
from bus.executor.paper import PaperVenue
from tests.helpers import wait_for

pytestmark = pytest.mark.redis


@pytest.fixture
def executor(tmp_path: Path, event_bus: Any) -> Iterator[TradeExecutor]:
    broker = PaperVenue(max_fill_volume="1", id_prefix="x-")
    broker.set_price("XAUUSD", "2000")
    broker.set_price("BTCUSD", "45000")
    ex = ExecutorBuilder.build_from_config(
        config={
            "source": "test-exec",
            "outbox_path": str(tmp_path / "outbox.db"),
            "outbox_retry_interval": 0,
            "symbols": ["XAUUSD", "BTCUSD"],
        },
        client=broker,
        event_bus=event_bus,
        logger=None,
    )
    yield ex
    ex.close()


def log_of(bus: Any, symbol: str = "XAUUSD") -> list[TradeEvent]:
    return [e for _, e in bus.read_log(symbol)]


def test_full_trade_publishes_in_order_with_one_correlation_and_a_causation_chain(
    executor: TradeExecutor, event_bus: Any
) -> None:
    # Given a buy of 2 lots that the broker fills 1 lot per price update
    ticket = executor.buy("XAUUSD", "2", sl="1900", tp="2100", causation_id="signal-1")
    assert ticket.status == "partially_filled"
    executor.client.set_price("XAUUSD", "2002")
    pid = executor.client.positions()[0]["position_id"]
    # When it is closed in two steps
    executor.close_position(pid, "0.5")
    executor.client.set_price("XAUUSD", "2004")
    executor.close_position(pid)
    # Then the log holds the whole trade, in order
    events = log_of(event_bus)
    assert [e.event_type for e in events] == [
        T.ORDER_CREATED,
        T.ORDER_PARTIALLY_FILLED,
        T.ORDER_FILLED,
        T.POSITION_OPENED,
        T.TRADE_EXECUTED,
        T.POSITION_PARTIALLY_CLOSED,
        T.POSITION_CLOSED,
    ]
    created, partial, filled, opened, executed, part_close, closed = events
    assert {e.correlation_id for e in events} == {ticket.correlation_id}
    assert {e.source for e in events} == {"test-exec"}
    assert created.causation_id == "signal-1"
    assert partial.causation_id == created.event_id
    assert filled.causation_id == partial.event_id
    assert opened.causation_id == filled.event_id
    assert executed.causation_id == filled.event_id
    assert part_close.causation_id == opened.event_id
    assert closed.causation_id == part_close.event_id
    # and the numbers: floats at the boundary, exact in the broker
    assert created.data["order_id"] == ticket.order_id and created.data["sl"] == 1900.0
    assert filled.data == {"order_id": ticket.order_id, "fill_price": 2001.0, "volume": 2.0}
    assert opened.data["entry_price"] == 2001.0 and opened.data["direction"] == "LONG"
    assert part_close.data["pnl"] == 0.5 and part_close.data["remaining_volume"] == 1.5
    assert closed.data["pnl"] == 4.5 and closed.data["total_pnl"] == 5.0
    assert executor.pending_events == 0


def test_stop_loss_chain(executor: TradeExecutor, event_bus: Any) -> None:
    ticket = executor.sell("XAUUSD", "1", sl="2010")
    executor.client.set_price("XAUUSD", "2011")
    events = log_of(event_bus)
    assert [e.event_type for e in events][-4:] == [
        T.POSITION_OPENED,
        T.TRADE_EXECUTED,
        T.STOP_LOSS_HIT,
        T.POSITION_CLOSED,
    ]
    opened, _, hit, closed = events[-4:]
    assert hit.causation_id == opened.event_id and closed.causation_id == hit.event_id
    assert {e.correlation_id for e in events} == {ticket.correlation_id}
    assert closed.data["pnl"] == -11.0 and closed.data["reason"] == "stop_loss"


def test_modify_cancel_and_reject_events(executor: TradeExecutor, event_bus: Any) -> None:
    limit = executor.buy("XAUUSD", "0.5", order_type="LIMIT", price="1990")
    executor.modify_order(limit.order_id, price="1991")
    executor.cancel_order(limit.order_id, "changed my mind")
    bad = executor.buy("XAUUSD", "0.013")
    market = executor.buy("XAUUSD", "0.1")
    pid = executor.client.positions()[0]["position_id"]
    executor.modify_position(pid, tp="2050")
    events = log_of(event_bus)
    assert [e.event_type for e in events] == [
        T.ORDER_CREATED,
        T.ORDER_MODIFIED,
        T.ORDER_CANCELLED,
        T.ORDER_REJECTED,
        T.TRADE_FAILED,
        T.ORDER_CREATED,
        T.ORDER_FILLED,
        T.POSITION_OPENED,
        T.TRADE_EXECUTED,
        T.POSITION_MODIFIED,
    ]
    assert events[1].data["price"] == 1991.0 and events[1].causation_id == events[0].event_id
    assert events[2].data["reason"] == "changed my mind" and events[2].causation_id == events[1].event_id
    assert bad.status == "rejected" and "invalid volume" in events[3].data["reason"]
    assert bad.reason == events[3].data["reason"]
    assert events[3].correlation_id == events[4].correlation_id == bad.correlation_id
    assert events[4].causation_id == events[3].event_id
    assert events[9].data == {"position_id": pid, "tp": 2050.0}
    assert events[9].correlation_id == market.correlation_id


def test_kill_switch_from_own_breach_refuses_orders_until_reset(
    executor: TradeExecutor, event_bus: Any, redis_client: redis.Redis, key_prefix: str
) -> None:
    breach = executor.report_risk_breach("XAUUSD", "max_drawdown", 1000.0, 1250.0)
    refused = executor.buy("XAUUSD", "0.1")
    other = executor.buy("BTCUSD", "0.1")
    assert refused.status == "rejected" and other.status == "filled"
    assert refused.reason.startswith("kill switch: max_drawdown")
    events = log_of(event_bus)
    assert [e.event_type for e in events] == [
        T.RISK_LIMIT_BREACHED,
        T.ORDER_REJECTED,
        T.TRADE_FAILED,
    ]
    assert events[0].event_id == breach.event_id
    assert events[1].data["reason"].startswith("kill switch: ") and events[1].data["order_id"] == refused.order_id
    # other executors and the CLI see it in Redis
    assert set(kill_switches(redis_client, Keys(key_prefix))) == {"XAUUSD"}
    assert executor.client.positions()[0]["symbol"] == "BTCUSD"
    executor.reset_kill_switch("XAUUSD")
    assert kill_switches(redis_client, Keys(key_prefix)) == {}
    assert executor.buy("XAUUSD", "0.1").status == "filled"


def test_kill_switch_set_and_released_in_redis_by_someone_else(
    executor: TradeExecutor, event_bus: Any, redis_client: redis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    engage_kill_switch(redis_client, keys, "BTCUSD", "daily loss limit")
    assert executor.sell("BTCUSD", "0.1").reason == "kill switch: daily loss limit"
    assert executor.kill_switch_reason("BTCUSD") == "daily loss limit"
    assert release_kill_switch(redis_client, keys, "BTCUSD")
    assert executor.sell("BTCUSD", "0.1").status == "filled"
    types = [e.event_type for e in log_of(event_bus, "BTCUSD")]
    assert types[:2] == [T.ORDER_REJECTED, T.TRADE_FAILED] and types[-1] is T.TRADE_EXECUTED


def test_kill_switch_learned_from_the_bus(executor: TradeExecutor, redis_url: str, make_bus: Any) -> None:
    assert executor.wait_until_listening(10)
    assert executor.kill_switch_reason("BTCUSD") is None
    # Given a risk worker elsewhere publishing a breach on the bus (and writing no kill-switch hash)
    risk_bus = make_bus(redis_url)
    breach = TradeEvent.create_risk_limit_breached("BTCUSD", "exposure", 10.0, 12.0, source="risk")
    risk_bus.publish(breach)
    risk_bus.close()
    # Then the executor's listener engages the kill switch (and shares it through the Redis hash)
    wait_for(lambda: executor.kill_switch_reason("BTCUSD"))
    assert executor.kill_switch_reason("XAUUSD") is None
    refused = executor.buy("BTCUSD", "0.1")
    assert refused.status == "rejected" and "exposure" in refused.reason and breach.event_id in refused.reason


def test_config_as_dataclass_or_dict(tmp_path: Path, event_bus: Any) -> None:
    with pytest.raises(ConfigError, match="outbox_pth"):
        ExecutorBuilder.build_from_config(config={"outbox_pth": "x"}, client=PaperVenue(), event_bus=event_bus)
    cfg = ExecutorConfig(source="cfg", outbox_path=str(tmp_path / "o.db"), listen_for_breaches=False)
    with ExecutorBuilder.build_from_config(config=cfg, client=None, event_bus=event_bus, logger=None) as ex:
        assert isinstance(ex.client, PaperVenue) and ex.config is cfg
        ex.client.set_price("XAUUSD", "2000")
        assert ex.buy("XAUUSD", "0.1").status == "filled"
    assert [e.source for e in log_of(event_bus)] == ["cfg"] * 4


def test_default_outbox_path_follows_xdg_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert ExecutorConfig(source="s1").resolved_outbox_path() == tmp_path / "tradebus" / "outbox-s1.sqlite3"


def test_executors_sharing_a_bus_listen_apart_from_the_caller(
    tmp_path: Path, event_bus: Any, redis_url: str, make_bus: Any
) -> None:
    # Given two executors built on one bus, and the caller listening on that bus too
    def build(name: str) -> TradeExecutor:
        broker = PaperVenue(id_prefix=f"{name}-")
        broker.set_price("BTCUSD", "45000")
        config = {"source": name, "outbox_path": str(tmp_path / f"{name}.db"), "symbols": ["BTCUSD"]}
        return ExecutorBuilder.build_from_config(config=config, client=broker, event_bus=event_bus)

    first, second = build("first"), build("second")
    seen: list[TradeEvent] = []
    event_bus.subscribe("BTCUSD", T.RISK_LIMIT_BREACHED, seen.append)
    caller = event_bus.listen_in_thread()
    try:
        assert first.wait_until_listening(10) and second.wait_until_listening(10) and caller.wait_ready(10)
        # When the first executor is closed and then a breach is published
        first.close()
        risk_bus = make_bus(redis_url)
        risk_bus.publish(TradeEvent.create_risk_limit_breached("BTCUSD", "exposure", 10.0, 12.0))
        risk_bus.close()
        # Then the second executor and the caller still hear it
        wait_for(lambda: second.kill_switch_reason("BTCUSD") and seen)
        assert second.buy("BTCUSD", "0.1").status == "rejected"
    finally:
        caller.stop()
        caller.join(5)
        second.close()
