"""Exactly-once outbox: an event the outbox sends is in the log once, and its tasks are enqueued once,
whatever crash or lost reply happens between the publish and the delete of its row."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from bus.config import LoadEnvironmentVariables, Settings
from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.dispatch.factory import EventBusFactory
from bus.embedded import EmbeddedRedis
from bus.events.model import TradeEvent
from bus.executor.outbox import Outbox, OutboxPublisher
from tests.helpers import delete_prefix, wait_for
from tests.reply_dropping_proxy import ReplyDroppingProxy

pytestmark = [pytest.mark.redis, pytest.mark.faults]
REPO = Path(__file__).resolve().parents[2]
SYMBOLS = ("XAUUSD", "EURUSD")

# Flushes the outbox given on the command line through the factory's bus, as a restarted executor does.
FLUSH = textwrap.dedent("""
    import json, sys
    from bus.config import LoadEnvironmentVariables
    from bus.dispatch.factory import EventBusFactory
    from bus.executor.outbox import Outbox, OutboxPublisher
    bus = EventBusFactory.create_from_env(LoadEnvironmentVariables(None, **json.loads(sys.argv[1])))
    OutboxPublisher(bus, Outbox(sys.argv[2]), source="crashy").flush()
""")


def order(i: int, symbol: str = "XAUUSD") -> TradeEvent:
    return TradeEvent.create_order_created(symbol, f"o{i}", "BUY", 2000.0 + i, 0.1, source="crashy")


def logged_ids(bus: RedisEventBus, symbol: str) -> list[str]:
    return [e.event_id for _, e in bus.read_log(symbol)]


def task_ids(broker: redis.Redis, prefix: str) -> Counter[str]:
    """The id of every per-event task message waiting on the broker's queues under ``prefix`` (not the
    log routes' wake-ups: those are one per route and symbol while one is pending, not one per event)."""
    ids: Counter[str] = Counter()
    for key in broker.scan_iter(f"{prefix}*"):
        if broker.type(key) == b"list":
            found = (json.loads(raw)["headers"]["id"] for raw in broker.lrange(key, 0, -1))
            ids.update(i for i in found if not i.startswith("wake:"))
    return ids


def expected_tasks(bus: RedisEventBus, events: list[TradeEvent]) -> Counter[str]:
    assert bus.dispatcher is not None
    return Counter(f"{e.event_id}:{r.name}" for e in events for r in bus.dispatcher.routes_for(e))


def nothing_pending(bus: RedisEventBus) -> bool:
    return not any(bus.client.zcard(bus.keys.pending_dispatch_for(s)) for s in SYMBOLS)


@pytest.fixture(params=["broker on the bus's server", "separate broker"])
def overrides(request: pytest.FixtureRequest, settings: Settings, key_prefix: str) -> Any:
    """Settings of the bus: its broker a database of the bus's own server (task messages ride in the
    publish script) or another redis-server (sent after the publish, recorded pending meanwhile)."""
    values = {"redis_url": settings.bus_url, "celery_broker_url": settings.broker_url, "key_prefix": key_prefix,
              "broker_key_prefix": f"{key_prefix}:"}  # fmt: skip
    if request.param == "broker on the bus's server":
        yield values
        return
    with EmbeddedRedis() as broker:
        yield {**values, "celery_broker_url": broker.url}


def test_crash_between_publish_and_delete_logs_and_dispatches_each_event_once(
    tmp_path: Path, overrides: dict[str, str], key_prefix: str
) -> None:
    # Given an outbox of 20 events of two symbols, and a process flushing it that is SIGKILLed after
    # the bus took them but before their rows are deleted (the test holds sqlite's write lock)
    path = tmp_path / "ob.db"
    events = [order(i, SYMBOLS[i % 2]) for i in range(20)]
    with Outbox(path) as outbox:
        for ev in events:
            outbox.append(ev)
    bus = EventBusFactory.create_from_env(LoadEnvironmentVariables(None, **overrides))
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    proc = subprocess.Popen(
        [sys.executable, "-c", FLUSH, json.dumps(overrides), str(path)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # logged, and (separate broker) its tasks sent: the process is past the publish, before the delete
        wait_for(lambda: any(logged_ids(bus, s) for s in SYMBOLS) and nothing_pending(bus), what="the flush")
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
        lock.rollback()
        lock.close()
    assert proc.returncode == -9, err
    # When the executor restarts on the same outbox and flushes it
    with Outbox(path) as outbox:
        assert len(outbox) == 20  # no row was deleted
        publisher = OutboxPublisher(bus, outbox, source="crashy")
        assert publisher.flush() == 20 and len(outbox) == 0
    assert bus.dispatcher is not None
    bus.dispatcher.redispatch_missed(grace_seconds=0)  # beat's safety net: nothing is left pending
    # Then each event is in the log once, in order, and each of its tasks was enqueued once
    for symbol in SYMBOLS:
        assert logged_ids(bus, symbol) == [e.event_id for e in events if e.symbol == symbol]
    assert publisher.already_logged >= 1
    broker = redis.Redis.from_url(overrides["celery_broker_url"])
    assert task_ids(broker, overrides["broker_key_prefix"]) == expected_tasks(bus, events)
    broker.close()
    bus.close()


def test_lost_replies_do_not_log_an_event_twice(tmp_path: Path, settings: Settings, key_prefix: str) -> None:
    # Given a bus reaching Redis through a proxy that can lose replies (the broker, reached directly, is
    # "another server": tasks are sent after the publish)
    reader = RedisEventBus(settings.bus_url, key_prefix=key_prefix)  # straight to Redis: sees the log
    host = reader.client.connection_pool.connection_kwargs
    with ReplyDroppingProxy((host["host"], host["port"])) as proxy:
        db = int(host.get("db", 0))
        cfg = LoadEnvironmentVariables(None, redis_url=proxy.url(db), celery_broker_url=settings.broker_url,
                                       key_prefix=key_prefix, broker_key_prefix=settings.broker_key_prefix,
                                       redis_socket_timeout=0.5, redis_health_check_interval=0)  # fmt: skip
        bus = EventBusFactory.create_from_env(cfg)
        assert bus.dispatcher is not None and not bus.dispatcher.stages_in_bus_pipeline
        now = [0.0]
        publisher = OutboxPublisher(
            bus, Outbox(tmp_path / "ob.db"), source="crashy", retry_interval=60, clock=lambda: now[0]
        )
        events = [order(i) for i in range(4)]
        assert publisher.publish(events[0]) is not None  # its connection is open: the next request goes out
        # When Redis runs the publish of events[1] but its reply is lost
        proxy.drop_replies = True
        assert publisher.publish(events[1]) is None  # timed out: queued
        wait_for(lambda: len(logged_ids(reader, "XAUUSD")) == 2, what="the lost publish to be logged")
        proxy.drop_replies = False
        # ... and, with two more queued behind it, the reply of the flush is lost too
        bus.client.ping()  # an open connection again
        for ev in events[2:]:
            assert publisher.publish(ev) is None  # within the retry interval: queued behind events[1]
        proxy.drop_replies = True
        assert publisher.flush() == 0 and publisher.pending == 3
        wait_for(lambda: len(logged_ids(reader, "XAUUSD")) > 2, what="the lost flush to be logged")
        proxy.drop_replies = False
        # Then the next flush finds all three logged: nothing is logged or dispatched twice
        assert publisher.flush() == 3 and publisher.pending == 0
        bus.dispatcher.redispatch_missed(grace_seconds=0)  # beat: the tasks the lost replies left pending
        assert logged_ids(reader, "XAUUSD") == [e.event_id for e in events]
        assert publisher.already_logged == 3
        broker = redis.Redis.from_url(settings.broker_url)
        assert task_ids(broker, settings.broker_key_prefix) == expected_tasks(bus, events)
        broker.close()
        publisher.close()
        bus.close()
    reader.close()


def test_another_outbox_under_the_same_source_is_never_skipped(tmp_path: Path, redis_url: str, key_prefix: str) -> None:
    # Given an outbox whose events 1..5 were logged for source "shared"
    bus = RedisEventBus(redis_url, key_prefix=key_prefix)
    first = OutboxPublisher(bus, Outbox(tmp_path / "a.db"), source="shared")
    for i in range(5):
        first.publish(order(i))
    # When a new outbox file (its numbers start again at 1) publishes under the same source
    second = OutboxPublisher(bus, Outbox(tmp_path / "b.db"), source="shared")
    receipt = second.publish(order(5))
    # Then its event is logged: numbers of another outbox are never compared
    assert receipt is not None and not receipt.already_logged
    assert len(logged_ids(bus, "XAUUSD")) == 6
    mark = bus.client.get(Keys(key_prefix).outbox_mark("XAUUSD", "shared"))
    assert mark is not None and mark.decode().startswith(f"{second.outbox.origin}|1|")
    first.close()
    second.close()
    bus.close()


def test_numbers_keep_increasing_after_a_killed_process(tmp_path: Path) -> None:
    # Given a process that numbers 3000 events published straight to the bus (no row stays) and dies
    path = tmp_path / "ob.db"
    code = textwrap.dedent(f"""
        import os, signal
        from bus.executor.outbox import Outbox
        ob = Outbox({str(path)!r})
        print(max(ob.claim_seq() for _ in range(3000)), ob.origin, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == -9, proc.stderr
    last, origin = proc.stdout.split()
    # Then the next run numbers above all of them, under the same origin; another file has its own
    with Outbox(path) as outbox:
        assert outbox.claim_seq() > int(last) and outbox.origin == origin
        outbox.append(order(0))
        assert outbox.peek()[0][0] > int(last)
    with Outbox(tmp_path / "other.db") as other:
        assert other.origin != origin


def test_outbox_events_reach_subscribers_and_state_like_any_publish(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    # Given a listener, and a bus applying state, publishing through the outbox and directly, in turns
    bus = RedisEventBus(redis_url, key_prefix=key_prefix, apply_state=True)
    listener = RedisEventBus(redis_url, key_prefix=key_prefix)
    got: list[TradeEvent] = []
    listener.subscribe_all("XAUUSD", got.append)
    handle = listener.listen_in_thread()
    assert listener.wait_until_listening(10)
    publisher = OutboxPublisher(bus, Outbox(tmp_path / "ob.db"), source="crashy")
    events = [order(i) for i in range(6)]
    for i, ev in enumerate(events):
        bus.publish(ev) if i % 2 else publisher.publish(ev)
    # Then every event arrives once, in order, from the broadcast (no gap: nothing read back from the log)
    wait_for(lambda: len(got) == 6, what="6 deliveries")
    assert [e.event_id for e in got] == [e.event_id for e in events]
    assert listener.counters.recovered_from_log == 0 and listener.counters.gaps_lost == 0
    entries = bus.client.xrange(bus.keys.log("XAUUSD"))
    assert {tuple(fields) for _, fields in entries} == {(b"type", b"event", b"n")}  # one log entry format
    assert [int(fields[b"n"]) for _, fields in entries] == list(range(1, 7))  # numbered as one sequence
    assert all(bus.get_order("XAUUSD", f"o{i}") is not None for i in range(6))
    handle.stop()
    handle.join(5)
    publisher.close()
    listener.close()
    bus.close()
    delete_prefix(redis_url, key_prefix)
