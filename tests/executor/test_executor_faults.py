"""The executor keeps trading through a Redis outage and loses no event, even across its own crash."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bus.embedded import EmbeddedRedis
from bus.events.model import TradeEvent
from bus.events.model import TradeEventType as T
from bus.executor import ExecutorBuilder, kill_switches
from bus.executor.paper import PaperVenue, RandomWalkFeed
from tests.helpers import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.faults]
REPO = Path(__file__).resolve().parents[2]


def session(executor: Any, feed: RandomWalkFeed, rounds: int) -> None:
    """Some trading: open, tick, partially close, close, with SL/TP levels that may trigger."""
    for _ in range(rounds):
        executor.buy("XAUUSD", "1.5", sl=str(feed.prices["XAUUSD"] - 30), tp=str(feed.prices["XAUUSD"] + 30))
        feed.step()
        for pos in executor.client.positions():
            executor.close_position(pos["position_id"], "0.5")
        feed.step()
        for pos in executor.client.positions():
            executor.close_position(pos["position_id"])


def assert_consistent(events: list[TradeEvent]) -> None:
    """Every cause precedes its effect; no duplicates; each trade's events share its correlation id."""
    seen: dict[str, TradeEvent] = {}
    for ev in events:
        assert ev.event_id not in seen, f"duplicate {ev.event_id}"
        if ev.causation_id is not None:
            cause = seen.get(ev.causation_id)
            assert cause is not None, f"{ev.event_type.value} arrived before its cause"
            assert cause.correlation_id == ev.correlation_id
        seen[ev.event_id] = ev


def test_redis_outage_mid_session_loses_nothing_and_keeps_order(
    tmp_path: Path, own_redis: EmbeddedRedis, make_bus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an executor trading through a Redis it does not control
    bus = make_bus(own_redis.url)
    broker = PaperVenue(max_fill_volume="1", id_prefix="f-")
    feed = RandomWalkFeed(broker, {"XAUUSD": "2000"}, seed=3, volatility=0.002)
    emitted: list[TradeEvent] = []
    ex = ExecutorBuilder.build_from_config(
        config={
            "source": "fault",
            "outbox_path": str(tmp_path / "ob.db"),
            "outbox_retry_interval": 0.2,
        },
        client=broker,
        event_bus=bus,
    )
    publish = ex.publisher.publish

    def recording_publish(ev: TradeEvent) -> Any:  # record what the executor emits, in order
        emitted.append(ev)
        return publish(ev)

    ex.publisher.publish = recording_publish
    session(ex, feed, 3)
    before = len(emitted)
    # When Redis goes away mid-session, trading goes on
    own_redis.stop()
    with caplog.at_level(logging.WARNING):
        session(ex, feed, 3)
        ex.report_risk_breach("XAUUSD", "max_loss", 100.0, 120.0)
        refused = ex.buy("XAUUSD", "0.1")
    assert refused.status == "rejected"  # the kill switch works without Redis, from local state
    assert ex.pending_events == len(emitted) - before > 20
    assert "bus publish failed" in caplog.text
    # Then once Redis is back, the next publish flushes the backlog first, in order
    own_redis.start()
    wait_for(lambda: ex.flush() >= 0 and ex.pending_events == 0)
    # the breach raised during the outage still holds, and Redis now knows it (for other executors)
    assert ex.kill_switch_reason("XAUUSD").startswith("max_loss")
    assert set(kill_switches(bus.client, bus.keys)) == {"XAUUSD"}
    ex.reset_kill_switch("XAUUSD")
    assert kill_switches(bus.client, bus.keys) == {}
    session(ex, feed, 1)
    wait_for(lambda: ex.pending_events == 0)  # next publish after the retry interval, or the flusher
    logged = [e for _, e in bus.read_log("XAUUSD")]
    assert [e.event_id for e in logged] == [e.event_id for e in emitted]
    assert_consistent(logged)
    assert {T.POSITION_PARTIALLY_CLOSED, T.POSITION_CLOSED, T.ORDER_PARTIALLY_FILLED} <= {e.event_type for e in logged}
    ex.close()
    bus.close()


def test_outbox_survives_an_executor_crash_and_the_next_executor_flushes_it(
    tmp_path: Path, redis_url: str, make_bus: Any
) -> None:
    # Given an executor process that trades with its bus down and is then SIGKILLed
    outbox = tmp_path / "ob.db"
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from bus.executor import ExecutorBuilder, kill_switches
        from bus.executor.paper import PaperVenue
        from tests.helpers import StreamBus
        broker = PaperVenue(max_fill_volume="1")
        broker.set_price("XAUUSD", "2000")
        ex = ExecutorBuilder.build_from_config(
            config={{"source": "crashy", "outbox_path": {str(outbox)!r}}},
            client=broker, event_bus=StreamBus("redis://127.0.0.1:1/0", "unused"))
        for i in range(5):
            ex.buy("XAUUSD", "2")
            broker.set_price("XAUUSD", str(2000 + i))
            ex.close_position(broker.positions()[-1]["position_id"])
        print(ex.pending_events, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == -9, proc.stderr
    queued = int(proc.stdout.strip())
    assert queued == 5 * 6  # created, partial, filled, opened, executed, closed
    # When a new executor starts on the same outbox with the bus up
    bus = make_bus(redis_url)
    with ExecutorBuilder.build_from_config(
        config={"source": "next", "outbox_path": str(outbox), "listen_for_breaches": False},
        client=PaperVenue(),
        event_bus=bus,
    ) as ex:
        # Then it flushed the old events at start, in order
        assert ex.pending_events == 0
    logged = [e for _, e in bus.read_log("XAUUSD")]
    assert len(logged) == queued and {e.source for e in logged} == {"crashy"}
    assert [e.event_type for e in logged[:6]] == [
        T.ORDER_CREATED,
        T.ORDER_PARTIALLY_FILLED,
        T.ORDER_FILLED,
        T.POSITION_OPENED,
        T.TRADE_EXECUTED,
        T.POSITION_CLOSED,
    ]
    assert_consistent(logged)
    bus.close()


def test_full_outbox_refuses_new_orders_but_trading_code_never_sees_an_error(
    tmp_path: Path, own_redis: EmbeddedRedis, make_bus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus(own_redis.url)
    own_redis.stop()  # and it stays down
    broker = PaperVenue()
    broker.set_price("XAUUSD", "2000")
    ex = ExecutorBuilder.build_from_config(
        config={
            "outbox_path": str(tmp_path / "ob.db"),
            "outbox_max_events": 6,
            "outbox_retry_interval": 60,
        },
        client=broker,
        event_bus=bus,
    )
    with caplog.at_level(logging.WARNING):
        assert ex.buy("XAUUSD", "0.1").status == "filled"  # 4 events queued
        pid = broker.positions()[0]["position_id"]
        ex.modify_position(pid, sl="1990")  # 5
        ex.modify_position(pid, tp="2010")  # 6: full
        ex.close_position(pid)  # still closes; its event is dropped, loudly
        refused = ex.buy("XAUUSD", "0.1")
    assert refused.status == "rejected" and refused.reason.startswith("outbox full")
    assert broker.positions() == [] and ex.pending_events == 6
    assert ex.publisher.dropped == 3  # the close + the refusal's two events
    assert "NOT published and NOT stored" in caplog.text and "position.closed" in caplog.text
    ex.close()
    bus.close()


def test_background_flusher_sends_the_backlog_when_redis_returns_without_new_trading(
    tmp_path: Path, own_redis: EmbeddedRedis, make_bus: Any
) -> None:
    bus = make_bus(own_redis.url)
    broker = PaperVenue()
    broker.set_price("XAUUSD", "2000")
    ex = ExecutorBuilder.build_from_config(
        config={"outbox_path": str(tmp_path / "ob.db"), "outbox_flush_interval": 0.05},
        client=broker,
        event_bus=bus,
    )
    own_redis.stop()
    ticket = ex.buy("XAUUSD", "0.1")
    assert ex.pending_events == 4
    own_redis.start()
    wait_for(lambda: ex.pending_events == 0)  # nobody trades: the flusher notices Redis is back
    assert {e.correlation_id for _, e in bus.read_log("XAUUSD")} == {ticket.correlation_id}
    assert len(bus.read_log("XAUUSD")) == 4
    ex.close()
    bus.close()
