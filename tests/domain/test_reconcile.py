"""Reconciliation jobs against a real Redis, with events published through the real RedisEventBus."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from bus.config import LoadEnvironmentVariables
from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.core.state import get_order, get_position
from bus.domain.lease import Lease, StaleTokenError
from bus.domain.reconcile import (
    ReconcileConfig,
    flag_stale_orders,
    last_runs,
    rebuild,
    reconcile_broker,
    redispatch,
    run_job,
    trim_logs,
)
from bus.errors import ConfigError
from bus.events.model import TradeEvent

pytestmark = pytest.mark.redis
SYM = "XAUUSD"


@pytest.fixture
def bus(redis_url, key_prefix):
    with RedisEventBus(redis_url, key_prefix=key_prefix, apply_state=True) as b:
        yield b


@pytest.fixture
def keys(key_prefix):
    return Keys(key_prefix)


def trading_day(bus):
    """Given: two orders and two positions with partial fills / closes, projected inline."""
    events = [
        TradeEvent.create_order_created(SYM, "o1", "BUY_LIMIT", 2000.5, 1.0, sl=1990.0),
        TradeEvent.create_order_partially_filled(SYM, "o1", 2000.5, 0.3),
        TradeEvent.create_order_created(SYM, "o2", "SELL", 2001.0, 2.0),
        TradeEvent.create_order_filled(SYM, "o2", 2001.0, 2.0),
        TradeEvent.create_position_opened(SYM, "p1", 2000.5, 1.0, "LONG"),
        TradeEvent.create_position_partially_closed(SYM, "p1", 2010.0, 0.4, 3.8),
        TradeEvent.create_position_opened(SYM, "p2", 2001.0, 2.0, "SHORT"),
        TradeEvent.create_position_closed(SYM, "p2", 1995.0, 12.0),
    ]
    bus.publish_many(events)
    return events


def test_rebuild_repairs_injected_drift(bus, redis_client, keys):
    trading_day(bus)
    c = bus.client
    good_o1 = get_order(c, keys, SYM, "o1")
    good_p1 = get_position(c, keys, SYM, "p1")
    good_p2 = get_position(c, keys, SYM, "p2")
    assert good_o1["filled_volume"] == "0.3" and good_p1["volume"] == "0.6"
    # When: the state drifts (a lost update, a wrong field, a lost index entry, a resurrected position)
    redis_client.hset(keys.order(SYM, "o1"), "filled_volume", "0.9")
    redis_client.srem(keys.open_orders(SYM), "o1")
    redis_client.delete(keys.position(SYM, "p1"))
    redis_client.sadd(keys.active_positions(SYM), "p2")

    report = rebuild(redis_client, keys, token=1, grace_s=0)

    by_id = {d["id"]: d for d in report["drift"]}
    assert set(by_id) == {"o1", "p1", "p2"}
    assert by_id["o1"]["fields"] == {"filled_volume": ["0.9", "0.3"]}
    assert by_id["o1"]["index"] == [False, True]
    assert by_id["p1"]["fields"]["volume"] == [None, "0.6"]
    assert by_id["p2"]["fields"] == {} and by_id["p2"]["index"] == [True, False]
    assert all(d["repaired"] for d in report["drift"]) and report["repaired"] == 3
    assert report["checked"] == 4
    # Then: the state is what the log says
    assert get_order(c, keys, SYM, "o1") == good_o1
    assert get_position(c, keys, SYM, "p1") == good_p1
    assert get_position(c, keys, SYM, "p2") == good_p2
    assert redis_client.smembers(keys.open_orders(SYM)) == {"o1"}
    assert redis_client.smembers(keys.active_positions(SYM)) == {"p1"}
    # and a second run finds nothing; no scratch keys are left behind
    assert rebuild(redis_client, keys, token=1, grace_s=0)["drift"] == []
    assert not list(redis_client.scan_iter(match=f"{keys.prefix}:scratch:*"))


def test_repaired_entity_stays_idempotent(bus, redis_client, keys):
    """Events the state task never applied are applied by the repair; their later delivery is a no-op."""
    bus.apply_state = False
    fill = TradeEvent.create_order_partially_filled(SYM, "o1", 2000.0, 0.25)
    bus.publish(TradeEvent.create_order_created(SYM, "o1", "BUY", 2000.0, 1.0))
    bus.publish(fill)
    report = rebuild(redis_client, keys, token=1, grace_s=0)
    assert [d["id"] for d in report["drift"]] == ["o1"]
    assert get_order(redis_client, keys, SYM, "o1")["filled_volume"] == "0.25"
    assert not bus.apply_state_event(fill)  # the delayed state task
    assert get_order(redis_client, keys, SYM, "o1")["filled_volume"] == "0.25"


def test_dry_run_reports_without_repairing(bus, redis_client, keys):
    trading_day(bus)
    redis_client.hset(keys.order(SYM, "o2"), "status", "pending")
    report = rebuild(redis_client, keys, token=1, grace_s=0, repair=False)
    assert [(d["id"], d["repaired"]) for d in report["drift"]] == [("o2", False)]
    assert redis_client.hget(keys.order(SYM, "o2"), "status") == "pending"


def test_recent_entities_left_to_the_state_task(bus, redis_client, keys):
    trading_day(bus)
    redis_client.hset(keys.order(SYM, "o1"), "filled_volume", "0.9")
    report = rebuild(redis_client, keys, token=1, grace_s=600)
    assert report["checked"] == 0 and report["in_flight"] == 4 and report["drift"] == []
    assert redis_client.hget(keys.order(SYM, "o1"), "filled_volume") == "0.9"


def test_concurrently_changed_entity_is_not_overwritten(bus, redis_client, keys):
    trading_day(bus)
    redis_client.hset(keys.order(SYM, "o1"), "filled_volume", "0.9")
    # an event applied to the live entity that the replay did not see (arrived after the log read)
    redis_client.zadd(keys.seen(SYM, "order", "o1"), {"event-from-the-future": 1})
    report = rebuild(redis_client, keys, token=1, grace_s=0)
    assert report["skipped_changed"] == [f"{SYM}:order:o1"]
    assert redis_client.hget(keys.order(SYM, "o1"), "filled_volume") == "0.9"


def test_trimmed_history_is_not_rebuilt(bus, redis_client, keys):
    trading_day(bus)
    redis_client.xtrim(keys.log(SYM), maxlen=7, approximate=False)  # drops o1's order.created
    redis_client.hset(keys.order(SYM, "o1"), "filled_volume", "0.9")
    report = rebuild(redis_client, keys, token=1, grace_s=0)
    assert report["incomplete"] == 1 and report["drift"] == []
    assert redis_client.hget(keys.order(SYM, "o1"), "filled_volume") == "0.9"


def test_dangling_index_entry_removed(bus, redis_client, keys):
    trading_day(bus)
    redis_client.sadd(keys.open_orders(SYM), "ghost")
    report = rebuild(redis_client, keys, token=1, grace_s=0)
    assert report["dangling_removed"] == [f"{SYM}:order:ghost"]
    assert not redis_client.sismember(keys.open_orders(SYM), "ghost")


def test_stale_token_cannot_repair(bus, redis_client, keys):
    trading_day(bus)
    redis_client.hset(keys.order(SYM, "o1"), "filled_volume", "0.9")
    rebuild(redis_client, keys, token=5, grace_s=0)  # a newer holder wrote here
    redis_client.hset(keys.order(SYM, "o1"), "filled_volume", "0.9")
    with pytest.raises(StaleTokenError):
        rebuild(redis_client, keys, token=4, grace_s=0)
    assert redis_client.hget(keys.order(SYM, "o1"), "filled_volume") == "0.9"


def test_stale_pending_orders_flagged(bus, redis_client, keys):
    old = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    bus.publish(TradeEvent.create_order_created(SYM, "old", "BUY_LIMIT", 1900.0, 1.0, timestamp=old))
    bus.publish(TradeEvent.create_order_created(SYM, "new", "BUY_LIMIT", 1900.0, 1.0))
    bus.publish(TradeEvent.create_order_created("EURUSD", "old-filled", "BUY", 1.1, 1.0, timestamp=old))
    bus.publish(TradeEvent.create_order_filled("EURUSD", "old-filled", 1.1, 1.0, timestamp=old))
    report = flag_stale_orders(redis_client, keys, max_age_s=3600, token=1)
    assert report["count"] == 1
    [item] = report["stale"]
    assert (item["symbol"], item["order_id"], item["status"]) == (SYM, "old", "pending")
    assert 7000 < item["age_s"] < 7300
    assert list(redis_client.hgetall(keys.stale_orders())) == [f"{SYM}|old"]
    # once it fills, the flag is cleared by the next run
    bus.publish(TradeEvent.create_order_filled(SYM, "old", 1900.0, 1.0))
    assert flag_stale_orders(redis_client, keys, max_age_s=3600, token=1)["count"] == 0
    assert redis_client.hgetall(keys.stale_orders()) == {}


class SnapshotBroker:
    """Stand-in for the broker (outside our system): implements the positions() protocol."""

    def __init__(self, positions):
        self._positions = positions

    def positions(self):
        return list(self._positions)


def test_broker_snapshot_mismatch_reported(bus, redis_client, keys):
    bus.publish_many(
        [
            TradeEvent.create_position_opened(SYM, "p1", 2000.0, 1.0, "LONG"),
            TradeEvent.create_position_partially_closed(SYM, "p1", 2005.0, 0.5, 2.5),
            TradeEvent.create_position_opened(SYM, "p2", 2000.0, 1.0, "SHORT"),
            TradeEvent.create_position_opened("EURUSD", "e1", 1.1, 3.0, "LONG"),
        ]
    )
    broker = SnapshotBroker(
        [
            {"symbol": SYM, "position_id": "p1", "direction": "LONG", "volume": "0.50", "entry_price": "2000"},
            {"symbol": SYM, "position_id": "p2", "direction": "LONG", "volume": "0.7", "entry_price": "2000"},
            {"symbol": "GBPUSD", "position_id": "g1", "direction": "SHORT", "volume": "1", "entry_price": "1.2"},
        ]
    )
    report = reconcile_broker(redis_client, keys, broker)
    assert not report["ok"]
    assert report["missing_in_state"] == [{"symbol": "GBPUSD", "position_id": "g1"}]
    assert report["missing_at_broker"] == [{"symbol": "EURUSD", "position_id": "e1"}]
    assert report["mismatched"] == [
        {
            "symbol": SYM,
            "position_id": "p2",
            "diff": {"volume": {"broker": "0.7", "state": "1"}, "direction": {"broker": "LONG", "state": "SHORT"}},
        }
    ]
    # p1 matches: 0.50 == 0.5 as decimals
    matching = SnapshotBroker(
        [
            {"symbol": SYM, "position_id": "p1", "direction": "LONG", "volume": "0.5", "entry_price": "2000"},
            {"symbol": SYM, "position_id": "p2", "direction": "SHORT", "volume": "1.0", "entry_price": "2000"},
            {"symbol": "EURUSD", "position_id": "e1", "direction": "LONG", "volume": "3", "entry_price": "1.1"},
        ]
    )
    assert reconcile_broker(redis_client, keys, matching)["ok"]


def test_trim_by_length_and_age_respects_pending_dispatch(bus, redis_client, keys):
    receipts = bus.publish_many([TradeEvent.create_signal_validated(SYM, f"s{i}") for i in range(10)])
    report = trim_logs(redis_client, keys, token=1, maxlen=6)
    assert report["removed"] == {SYM: 4} and redis_client.xlen(keys.log(SYM)) == 6
    # an entry still awaiting dispatch holds back both kinds of trimming
    pending_id = receipts[5].log_id
    redis_client.zadd(keys.pending_dispatch_for(SYM), {pending_id: 1})
    report = trim_logs(redis_client, keys, token=1, maxlen=2, retention_s=0)
    assert report["held_by_pending_dispatch"] == [SYM]
    assert report["removed"] == {SYM: 1}
    assert redis_client.xrange(keys.log(SYM))[0][0] == pending_id
    redis_client.zrem(keys.pending_dispatch_for(SYM), pending_id)
    assert trim_logs(redis_client, keys, token=1, retention_s=0)["total_removed"] == 5
    with pytest.raises(StaleTokenError):
        trim_logs(redis_client, keys, token=0, maxlen=1)


def test_run_job_one_effective_run_for_two_beats(redis_url, keys):
    import redis

    runs: list[int] = []
    started, release = threading.Event(), threading.Event()
    results: list[dict] = []

    def job(token, heartbeat):
        runs.append(token)
        started.set()
        release.wait(10)
        heartbeat()
        return {"did": "work"}

    def beat(name):
        client = redis.Redis.from_url(redis_url)
        results.append(run_job(client, keys, "rebuild", job, min_interval_s=60, owner=name))
        client.close()

    first = threading.Thread(target=beat, args=("beat-a",))
    first.start()
    assert started.wait(10)
    beat("beat-b")  # while a runs: lease held
    release.set()
    first.join()
    beat("beat-c")  # just after a finished: ran recently
    assert runs == [1]
    ran = [r for r in results if r["ran"]]
    assert len(ran) == 1 and ran[0]["did"] == "work" and ran[0]["token"] == 1
    reasons = sorted(r["reason"].split(" ")[0] for r in results if not r["ran"])
    assert reasons == ["lease", "ran"]
    client = redis.Redis.from_url(redis_url)
    assert last_runs(client, keys)["rebuild"]["owner"] == "beat-a"
    client.close()


def test_run_job_stops_when_lease_lost(redis_client, keys):
    def job(token, heartbeat):
        # another holder takes over (our lease expired while we were paused)
        redis_client.delete(keys.lease("{lease-reconcile-trim}"))
        assert Lease(redis_client, keys, "reconcile-trim", owner="other").acquire() == token + 1
        heartbeat()
        return {}

    with pytest.raises(StaleTokenError, match="lost"):
        run_job(redis_client, keys, "trim", job)


def test_redispatch_without_dispatcher_is_reported():
    assert redispatch(None, grace_s=30)["skipped"]


def test_config_from_settings(monkeypatch):
    monkeypatch.setenv("TRADEBUS_RECONCILE_STALE_ORDER_AGE", "600")
    monkeypatch.setenv("TRADEBUS_RECONCILE_LOG_MAXLEN", "5000")
    cfg = ReconcileConfig.from_settings(LoadEnvironmentVariables(None).reconcile)
    assert cfg.stale_order_age == 600 and cfg.log_maxlen == 5000 and cfg.log_retention is None
    monkeypatch.setenv("TRADEBUS_RECONCILE_LOG_MAXLEN", "lots")
    with pytest.raises(ConfigError, match="TRADEBUS_RECONCILE_LOG_MAXLEN"):
        LoadEnvironmentVariables(None)
