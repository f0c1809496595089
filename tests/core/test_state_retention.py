"""Bounded memory: finished orders/positions and breach markers expire after the retention, the
idempotency window per entity is capped, late events never resurrect an expired entity, and the
doctor reports memory by key family. Real Redis throughout (Celery only where the task is the subject)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis

from bus.config import LoadEnvironmentVariables
from bus.core import state
from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.core.keyspace import broker_families, bus_families
from bus.core.scripts import execute_pipeline
from bus.core.sequenced import SequencedPublisher
from bus.dispatch.deadletters import dead_letter
from bus.dispatch.messages import redis_queue_key
from bus.domain.reconcile import rebuild
from bus.domain.risk import RiskLimits, check_event
from bus.errors import ConfigError
from bus.events.model import TradeEvent as T
from celery_app import make_celery
from tests.helpers import wait_for

pytestmark = pytest.mark.redis

S = "XAUUSD"
WEEK = 7 * 24 * 3600


def ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


def trade(n: int, **kw: str) -> list[T]:
    """One complete trade: order created and filled, its position opened and closed."""
    o, p = f"o{n}", f"p{n}"
    return [
        T.create_order_created(S, o, "BUY", 2000.5, 0.1, sl=1995.0, **kw),
        T.create_order_filled(S, o, 2000.4, 0.1, **kw),
        T.create_position_opened(S, p, 2000.4, 0.1, "LONG", **kw),
        T.create_position_closed(S, p, 2001.0, 0.06, **kw),
    ]


def apply_all(r: redis.Redis, keys: Keys, events: list[T], **kw: Any) -> list[int]:
    """Apply through one pipeline (as the state task and rebuild do); the script's replies."""
    pipe = r.pipeline(transaction=False)
    for e in events:
        assert state.stage_apply(pipe, keys, e, **kw)
    return [int(x) for x in execute_pipeline(pipe, (state.SCRIPT,))]


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    return Keys(key_prefix)


# --- expiry of terminal entities ------------------------------------------------------------------


def test_terminal_entities_expire_with_their_window_open_ones_never(redis_client, keys):
    events = [*trade(1), T.create_order_created(S, "open", "BUY_LIMIT", 1900.0, 1.0)]
    assert apply_all(redis_client, keys, events, retention=3600) == [1] * 5
    for key in (
        keys.order(S, "o1"),
        keys.seen(S, "order", "o1"),
        keys.position(S, "p1"),
        keys.seen(S, "position", "p1"),
    ):
        assert 3590 < redis_client.ttl(key) <= 3600, key
    assert redis_client.ttl(keys.order(S, "open")) == -1 and redis_client.ttl(keys.seen(S, "order", "open")) == -1
    assert [o["order_id"] for o in state.open_orders(redis_client, keys, S)] == ["open"]


def test_retention_zero_keeps_everything(redis_client, keys):
    apply_all(redis_client, keys, trade(1), retention=0)
    assert redis_client.ttl(keys.order(S, "o1")) == -1 and redis_client.ttl(keys.position(S, "p1")) == -1
    assert redis_client.ttl(keys.seen(S, "order", "o1")) == -1


def test_expired_entity_is_unknown_to_queries(redis_client, keys):
    cancelled = T.create_order_cancelled(S, "c1", reason="user")
    apply_all(redis_client, keys, [*trade(1), T.create_order_created(S, "c1", "BUY", 1.0, 1.0), cancelled], retention=1)
    assert state.get_order(redis_client, keys, S, "o1")["status"] == "filled"
    wait_for(lambda: state.get_order(redis_client, keys, S, "o1") is None, timeout=5, what="o1 to expire")
    wait_for(lambda: state.get_order(redis_client, keys, S, "c1") is None, timeout=5, what="c1 to expire")
    assert state.get_position(redis_client, keys, S, "p1") is None
    assert state.open_orders(redis_client, keys, S) == [] and state.active_positions(redis_client, keys, S) == []
    assert not redis_client.exists(keys.open_orders(S), keys.active_positions(S))
    wait_for(lambda: not list(redis_client.scan_iter(f"{keys.prefix}:*")), timeout=5, what="every key gone")


# --- idempotency ----------------------------------------------------------------------------------


def test_duplicates_after_the_terminal_state_change_nothing(redis_client, keys):
    events = trade(1)
    apply_all(redis_client, keys, events, retention=3600)
    before = state.get_order(redis_client, keys, S, "o1"), state.get_position(redis_client, keys, S, "p1")
    redis_client.expire(keys.order(S, "o1"), 100)  # a duplicate must not extend the retention either
    assert apply_all(redis_client, keys, events + events, retention=3600, now=datetime.now(UTC).timestamp()) == [0] * 8
    assert (state.get_order(redis_client, keys, S, "o1"), state.get_position(redis_client, keys, S, "p1")) == before
    assert redis_client.ttl(keys.order(S, "o1")) <= 100


def test_window_is_capped_and_evicted_events_still_apply_once(redis_client, keys):
    # Given an order with more fills than the window remembers
    n = state.WINDOW + 50
    fills = [T.create_order_partially_filled(S, "o1", 2000.0, 0.01, timestamp=ago(seconds=n - i)) for i in range(n)]
    assert apply_all(redis_client, keys, [T.create_order_created(S, "o1", "BUY", 2000.0, 5.0, timestamp=ago(hours=1))])
    assert apply_all(redis_client, keys, fills) == [1] * n
    seen = keys.seen(S, "order", "o1")
    # Then its window holds WINDOW ids plus the floor, as a compact listpack
    assert redis_client.zcard(seen) == state.WINDOW + 1
    assert redis_client.object("encoding", seen) == "listpack"
    assert state.get_order(redis_client, keys, S, "o1")["filled_volume"] == "1.5"
    # When every fill is redelivered (the oldest 50 fell out of the window), nothing is counted twice
    assert apply_all(redis_client, keys, fills) == [0] * n
    assert state.get_order(redis_client, keys, S, "o1")["filled_volume"] == "1.5"
    # And an out-of-order fill older than the floor is refused as well (at most once beyond the window)
    stray = T.create_order_partially_filled(S, "o1", 2000.0, 0.01, timestamp=ago(seconds=n + 5))
    assert apply_all(redis_client, keys, [stray]) == [0]


def test_redelivery_within_the_window_counts_once(redis_client, keys):
    fill = T.create_order_partially_filled(S, "o1", 2000.0, 0.25)
    created = T.create_order_created(S, "o1", "BUY", 2000.0, 1.0)
    assert apply_all(redis_client, keys, [fill, created, fill, created, fill]) == [1, 1, 0, 0, 0]
    order = state.get_order(redis_client, keys, S, "o1")
    assert (order["status"], order["filled_volume"], order["price"]) == ("partially_filled", "0.25", "2000.0")


# --- late events -----------------------------------------------------------------------------------


def test_late_events_of_an_expired_entity_are_refused(redis_client, keys):
    created, filled = trade(1)[:2]
    apply_all(redis_client, keys, [created, filled], retention=1)
    wait_for(lambda: state.get_order(redis_client, keys, S, "o1") is None, timeout=5, what="o1 to expire")
    # a dead-letter replay or re-dispatch of its events, now older than the retention
    now = datetime.now(UTC).timestamp()
    assert apply_all(redis_client, keys, [created, filled], retention=1, now=now) == [state.REFUSED_LATE] * 2
    assert state.get_order(redis_client, keys, S, "o1") is None
    assert state.open_orders(redis_client, keys, S) == []
    assert not list(redis_client.scan_iter(f"{keys.prefix}:*"))


def test_old_events_still_update_an_entity_that_exists(redis_client, keys):
    # the fill arrived first; the order.created stamped two hours ago (older than the retention) comes late
    filled = T.create_order_filled(S, "o1", 2000.4, 0.1)
    created = T.create_order_created(S, "o1", "BUY", 2000.5, 0.1, timestamp=ago(hours=2))
    now = datetime.now(UTC).timestamp()
    assert apply_all(redis_client, keys, [filled, created], retention=3600, now=now) == [1, 1]
    order = state.get_order(redis_client, keys, S, "o1")
    assert (order["status"], order["price"]) == ("filled", "2000.5")


def test_sequenced_publish_projects_with_the_retention_setting(settings, redis_client, keys):
    # the outbox's exactly-once path runs the bus's inline effects: the same projection, same retention
    short = settings.model_copy(update={"state_retention": 60})
    with RedisEventBus(settings=short, apply_state=True) as bus:
        sequenced = SequencedPublisher(bus.publisher, source="executor", origin="test")
        receipts = sequenced.publish(list(enumerate(trade(1), start=1)))
    assert [r.already_logged for r in receipts] == [False] * 4
    for key in (keys.order(S, "o1"), keys.seen(S, "order", "o1"), keys.position(S, "p1")):
        assert 50 < redis_client.ttl(key) <= 60, key


def test_publish_time_projection_accepts_old_timestamps(redis_url, key_prefix, redis_client, keys):
    # an event being logged is never late: a backfilled order stamped last year is projected
    with RedisEventBus(redis_url, key_prefix=key_prefix, apply_state=True) as bus:
        bus.publish(T.create_order_created(S, "old", "BUY_LIMIT", 1900.0, 1.0, timestamp=ago(days=365)))
        assert [o["order_id"] for o in bus.get_open_orders(S)] == ["old"]
        # the late path (what the worker does) refuses to create one from an event that old
        assert not bus.apply_state_event(T.create_order_created(S, "old2", "BUY", 1.0, 1.0, timestamp=ago(days=8)))
        assert bus.get_order(S, "old2") is None


@pytest.mark.celery
def test_state_task_uses_the_retention_setting_and_reports_refusals(settings, redis_client, keys):
    app = make_celery(settings.model_copy(update={"state_retention": 60}), set_as_current=False)
    task = app.tasks["tradebus.state.apply"]
    for e in trade(1):
        assert task.apply(args=[e.to_json()]).get() == {"changed": True}
    assert 50 < redis_client.ttl(keys.order(S, "o1")) <= 60
    late = T.create_order_created(S, "o9", "BUY", 1.0, 1.0, timestamp=ago(minutes=2))
    result = task.apply(args=[late.to_json()]).get()
    assert result["changed"] is False and "retention" in result["reason"]
    assert redis_client.exists(keys.order(S, "o9")) == 0


# --- rebuild within the log ------------------------------------------------------------------------


def test_rebuild_neither_resurrects_expired_entities_nor_loses_refused_ones(redis_url, key_prefix, redis_client, keys):
    events = trade(1)
    backfill = T.create_order_created(S, "gtc", "BUY_LIMIT", 1900.0, 1.0, timestamp=ago(days=30))
    with RedisEventBus(redis_url, key_prefix=key_prefix) as bus:
        for e in [*events, backfill]:
            bus.publish(e)
    # the worker projected the trade and refused to create an order from a 30-day-old event
    now = datetime.now(UTC).timestamp()
    assert apply_all(redis_client, keys, [*events, backfill], retention=1, now=now) == [1, 1, 1, 1, 2]
    wait_for(lambda: not redis_client.exists(keys.order(S, "o1"), keys.position(S, "p1")), timeout=5,
             what="the trade to expire")  # fmt: skip
    report = rebuild(redis_client, keys, token=1, grace_s=0, retention=1)
    # the trade stays gone (its last log entry is older than the retention), the open order is restored
    assert (report["expired"], report["repaired"]) == (2, 1), report
    assert (
        state.get_order(redis_client, keys, S, "o1") is None and state.get_position(redis_client, keys, S, "p1") is None
    )
    assert [o["order_id"] for o in state.open_orders(redis_client, keys, S)] == ["gtc"]
    assert redis_client.ttl(keys.order(S, "gtc")) == -1


def test_rebuild_repair_gives_a_terminal_entity_its_expiry(redis_url, key_prefix, redis_client, keys):
    with RedisEventBus(redis_url, key_prefix=key_prefix) as bus:  # no state task ran at all
        for e in trade(1):
            bus.publish(e)
    report = rebuild(redis_client, keys, token=1, grace_s=0, retention=3600)
    assert report["repaired"] == 2 and report["expired"] == 0
    assert state.get_order(redis_client, keys, S, "o1")["status"] == "filled"
    for key in (keys.order(S, "o1"), keys.seen(S, "order", "o1"), keys.position(S, "p1")):
        assert 3500 < redis_client.ttl(key) <= 3600, key


# --- risk breaches ---------------------------------------------------------------------------------


class Published(list):
    def __call__(self, event: T) -> None:
        self.append(event)


def test_breach_marker_raises_once_within_the_retention_then_expires(redis_client, keys):
    limits = RiskLimits(max_order_volume=Decimal(1))
    event = T.create_order_created(S, "o1", "BUY", 2000.0, 3.0)
    published = Published()
    [first] = check_event(redis_client, keys, event, limits, published, retention=1)
    [again] = check_event(redis_client, keys, event, limits, published, retention=1)  # redelivery in the window
    assert (first.raised, again.raised, len(published)) == (True, False, 1)
    marker = keys.breach("max_order_volume", event.event_id)
    assert redis_client.pttl(marker) > 0
    wait_for(lambda: not redis_client.exists(marker), timeout=5, what="the marker to expire")
    [late] = check_event(redis_client, keys, event, limits, published, retention=1)
    assert late.raised and len(published) == 2  # beyond the window the guarantee ends, as documented


def test_breach_marker_kept_forever_with_retention_zero(redis_client, keys):
    event = T.create_order_created(S, "o1", "BUY", 2000.0, 3.0)
    check_event(redis_client, keys, event, RiskLimits(max_order_volume=Decimal(1)), Published(), retention=0)
    assert redis_client.ttl(keys.breach("max_order_volume", event.event_id)) == -1


# --- memory ---------------------------------------------------------------------------------------


def persistent_bytes(r: redis.Redis, prefix: str) -> int:
    """Exact MEMORY USAGE of every key under ``prefix`` that has no TTL."""
    names = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    pipe = r.pipeline(transaction=False)
    for k in names:
        pipe.pttl(k)
        pipe.memory_usage(k, samples=0)
    replies = pipe.execute()
    return sum(int(size or 0) for ttl, size in zip(replies[::2], replies[1::2], strict=True) if ttl == -1)


@pytest.mark.parametrize(("retention", "bound"), [(WEEK, 1), (0, None)])
def test_state_of_20000_events_leaves_under_a_byte_per_event_that_never_expires(redis_client, keys, retention, bound):
    events = [e for n in range(5_000) for e in trade(n)]
    for i in range(0, len(events), 2_000):
        apply_all(redis_client, keys, events[i : i + 2_000], retention=retention)
    per_event = persistent_bytes(redis_client, keys.prefix) / len(events)
    if bound is not None:
        assert per_event < bound, per_event
    else:  # the same measure does see what is kept when nothing expires
        assert per_event > 100, per_event


# --- doctor ---------------------------------------------------------------------------------------


def test_families_cover_the_keys_tradebus_writes():
    k = Keys("tb")
    classify = bus_families("tb")
    expected = {
        k.log(S): "logs",
        k.heads(S): "logs",
        k.order(S, "1"): "state hashes",
        k.position(S, "1"): "state hashes",
        k.open_orders(S): "state indexes",
        k.active_positions(S): "state indexes",
        k.symbols(): "state indexes",
        k.seen(S, "order", "1"): "idempotency windows",
        k.breach("max_order_volume", "e1"): "risk breaches",
        k.risk(S): "risk counters",
        k.daily_loss("2024-05-01"): "risk counters",
        k.dead_letters(): "dead letters",
        k.pending_dispatch(): "pending dispatch",
        k.pending_dispatch_for(S): "pending dispatch",
        k.outbox_mark(S, "executor"): "outbox marks",
        k.notified("e1"): "notify records",
        k.deliveries("t1"): "delivery counters",
        k.scratch("r1").order(S, "1"): "rebuild scratch",
        k.stats(): "other",
        "tb:{XAUUSD}:applied:order:1": "legacy idempotency sets",
        "tb:risk:breaches": "legacy idempotency sets",
        "tb-other:{XAUUSD}:log": None,
        "tradebus.state": None,
    }
    assert {key: classify(key) for key in expected} == expected
    broker = broker_families("tb:", [redis_queue_key("tradebus.state", p, "tb:") for p in (0, 3)])
    keys = ("tb:tradebus.state", "tb:tradebus.state\x06\x163", "tb:unacked", "tb:_kombu.binding.q")
    assert [broker(x) for x in keys] == ["broker queues", "broker queues", "broker unacked", "broker bindings"]
    assert broker("tb:{XAUUSD}:log") is None


def test_doctor_reports_memory_by_family(redis_url, broker_url, key_prefix, redis_client, keys):
    # Given a bus with a finished trade, an open order, a breach, a dead letter and a queued task
    with RedisEventBus(redis_url, key_prefix=key_prefix, apply_state=True) as bus:
        for e in [*trade(1), T.create_order_created(S, "open", "BUY_LIMIT", 1900.0, 1.0)]:
            bus.publish(e)
    check_event(redis_client, keys, trade(2)[0], RiskLimits(max_order_volume=Decimal("0.01")), Published())
    dead_letter(redis_client, keys, event_json="{}", route="state", task="t", attempts=1, reason="test")
    broker = redis.Redis.from_url(broker_url)
    broker.lpush(f"{key_prefix}:tradebus.state", b"{}")
    broker.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_", "TRADEBUS_"))}
    env.update(REDIS_URL=redis_url, CELERY_BROKER_URL=broker_url, TRADEBUS_KEY_PREFIX=key_prefix,
               TRADEBUS_BROKER_KEY_PREFIX=f"{key_prefix}:")  # fmt: skip
    # When the doctor runs
    p = subprocess.run([sys.executable, "-m", "bus.cli", "doctor", "--json", "--ping-timeout", "0.3"], env=env,
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    # Then its memory check names each family with its key count; only the open order's keys never expire
    memory = {c["name"]: c for c in json.loads(p.stdout)["checks"]}["memory"]
    lines = {line.split(":")[0]: line for line in memory["detail"].splitlines()}
    assert memory["status"] == "ok", memory
    assert lines["state hashes"].startswith("state hashes: 3 keys, ") and "never expire" in lines["state hashes"]
    assert lines["idempotency windows"].startswith("idempotency windows: 3 keys, ")
    assert lines["logs"].startswith("logs: 2 keys, ")
    assert lines["risk breaches"].startswith("risk breaches: 1 keys, ") and "never expire" not in lines["risk breaches"]
    assert lines["dead letters"].startswith("dead letters: 1 keys, ")
    assert lines["broker queues"].startswith("broker queues: 1 keys, ")


def test_retention_setting_is_validated(monkeypatch):
    monkeypatch.setenv("TRADEBUS_STATE_RETENTION", "0")
    assert LoadEnvironmentVariables(None).state_retention == 0
    monkeypatch.setenv("TRADEBUS_STATE_RETENTION", "-1")
    with pytest.raises(ConfigError, match="TRADEBUS_STATE_RETENTION"):
        LoadEnvironmentVariables(None)
    monkeypatch.delenv("TRADEBUS_STATE_RETENTION")
    assert LoadEnvironmentVariables(None).state_retention == WEEK
