"""The local outbox: durable, ordered, bounded, single-owner; the publisher that queues behind it."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis

from bus.embedded import EmbeddedRedis
from bus.events.model import TradeEvent
from bus.executor.outbox import Outbox, OutboxFull, OutboxLocked, OutboxPublisher


def event(i: int, symbol: str = "XAUUSD") -> TradeEvent:
    return TradeEvent.create_order_created(symbol, f"o{i}", "BUY", 2000.0 + i, 0.1, seq=i)


class StreamSink:
    """The smallest real-Redis publisher: XADD to one stream (raises redis.ConnectionError when down)."""

    def __init__(self, url: str, key: str = "outbox-test:sink") -> None:
        self.client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2)
        self.key = key

    def publish(self, ev: TradeEvent) -> str:
        return self.client.xadd(self.key, {"e": ev.encode()}).decode()

    def received(self) -> list[TradeEvent]:
        return [TradeEvent.from_json(f[b"e"]) for _, f in self.client.xrange(self.key)]


def test_append_peek_remove_in_order_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ob.sqlite3"
    events = [event(i) for i in range(5)]
    with Outbox(path) as ob:
        for ev in events:
            ob.append(ev)
        assert len(ob) == 5 and ob.size_bytes == sum(len(e.encode()) for e in events)
        first_seq, first = ob.peek(1)[0]
        assert first == events[0]
        ob.remove(first_seq)
        ob.remove(first_seq)  # idempotent
        assert len(ob) == 4
    with Outbox(path) as ob:
        assert [e for _, e in ob.peek()] == events[1:]
        assert ob.size_bytes == sum(len(e.encode()) for e in events[1:])


def test_bounded_by_count_and_bytes(tmp_path: Path) -> None:
    with Outbox(tmp_path / "n.db", max_events=3) as ob:
        for i in range(3):
            ob.append(event(i))
        with pytest.raises(OutboxFull, match=r"full \(3/3 events"):
            ob.append(event(3))
        assert len(ob) == 3
    size = len(event(0).encode())
    with Outbox(tmp_path / "b.db", max_bytes=2 * size + 10) as ob:
        ob.append(event(0))
        ob.append(event(1))
        with pytest.raises(OutboxFull, match="bytes"):
            ob.append(event(2))


def test_one_owner_per_file(tmp_path: Path) -> None:
    path = tmp_path / "ob.db"
    first = Outbox(path)
    with pytest.raises(OutboxLocked):
        Outbox(path)
    first.close()
    Outbox(path).close()


def test_appended_events_survive_a_killed_process(tmp_path: Path) -> None:
    # Given a process that appends 50 events and dies without closing anything (SIGKILL)
    path = tmp_path / "ob.db"
    code = textwrap.dedent(f"""
        import os, signal
        from bus.events.model import TradeEvent
        from bus.executor.outbox import Outbox
        ob = Outbox({str(path)!r})
        for i in range(50):
            ob.append(TradeEvent.create_order_created("XAUUSD", f"o{{i}}", "BUY", 2000.0, 0.1, event_id=f"e{{i}}"))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    # Then all 50 are there, in order, with their ids
    with Outbox(path) as ob:
        assert [e.event_id for _, e in ob.peek(100)] == [f"e{i}" for i in range(50)]


@pytest.mark.redis
@pytest.mark.faults
def test_publisher_queues_during_outage_and_flushes_in_order(tmp_path: Path, own_redis: EmbeddedRedis) -> None:
    sink = StreamSink(own_redis.url)
    now = [0.0]
    pub = OutboxPublisher(sink, Outbox(tmp_path / "ob.db"), retry_interval=5.0, clock=lambda: now[0])
    events = [event(i) for i in range(10)]
    assert pub.publish(events[0]) is not None
    own_redis.stop()
    for ev in events[1:6]:
        assert pub.publish(ev) is None  # no exception: queued
    assert pub.pending == 5
    own_redis.start()
    # Within the retry interval publish() does not retry the bus: the event queues behind the others.
    pub.publish(events[6])
    assert pub.pending == 6 and len(sink.received()) == 1
    now[0] += 5.0
    for ev in events[7:]:
        pub.publish(ev)  # the first one flushes the backlog, then goes out itself
    assert pub.pending == 0
    assert [e.event_id for e in sink.received()] == [e.event_id for e in events]
    assert (pub.published, pub.queued, pub.dropped) == (10, 6, 0)
    pub.close()


@pytest.mark.redis
@pytest.mark.faults
def test_explicit_flush_stops_at_the_first_failure(tmp_path: Path, own_redis: EmbeddedRedis) -> None:
    sink = StreamSink(own_redis.url)
    pub = OutboxPublisher(sink, Outbox(tmp_path / "ob.db"), retry_interval=0)
    own_redis.stop()
    for i in range(3):
        pub.publish(event(i))
    assert pub.flush() == 0 and pub.pending == 3
    own_redis.start()
    assert pub.flush() == 3 and pub.pending == 0
    assert [e.data["seq"] for e in sink.received()] == [0, 1, 2]
    pub.close()


def test_full_outbox_drops_loudly_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A bus that cannot connect at all: nothing listens on this port.
    sink = StreamSink("redis://127.0.0.1:1/0")
    pub = OutboxPublisher(sink, Outbox(tmp_path / "ob.db", max_events=2), retry_interval=0)
    with caplog.at_level(logging.CRITICAL, logger="bus.executor.outbox"):
        for i in range(3):
            pub.publish(event(i))
    assert pub.pending == 2 and pub.dropped == 1 and pub.is_full
    assert "NOT published and NOT stored" in caplog.text and '"o2"' in caplog.text
    pub.close()
