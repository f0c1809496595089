"""publish / publish_many against a real Redis: one atomic step, receipts, nothing on bad input."""

from __future__ import annotations

import orjson
import pytest
import redis

from bus import BusConnectionError, EventValidationError, RedisEventBus, TradeEvent
from bus.embedded import EmbeddedRedis

pytestmark = pytest.mark.redis


def order(i: int = 1, symbol: str = "XAUUSD", **extra) -> TradeEvent:
    return TradeEvent.create_order_created(symbol=symbol, order_id=str(i), order_type="BUY", price=2000.5,
                                           volume=0.1, **extra)  # fmt: skip


@pytest.fixture
def bus(redis_url, key_prefix):
    b = RedisEventBus(redis_url, key_prefix=key_prefix)
    yield b
    b.close()


def test_publish_logs_and_broadcasts_with_gap_metadata(bus, redis_client, key_prefix):
    ps = redis.Redis.from_url(bus.url).pubsub()
    ps.subscribe("trades:PUBTEST:order.created")
    ps.get_message(timeout=2)  # subscribe confirmation
    e1, e2 = order(1, "PUBTEST"), order(2, "PUBTEST")
    r1, r2 = bus.publish(e1), bus.publish(e2)
    assert (r1.event_id, r1.subscribers, r1.dispatched, r1.not_dispatched) == (
        e1.event_id,
        1,
        (),
        (),
    )
    assert r1.log_id < r2.log_id or len(r1.log_id) < len(r2.log_id)
    log = redis_client.xrange(f"{key_prefix}:{{PUBTEST}}:log")
    assert [i for i, _ in log] == [r1.log_id, r2.log_id]
    assert log[0][1] == {"type": "order.created", "event": e1.to_json()}
    msgs = [ps.get_message(timeout=2) for _ in range(2)]
    first, second = (orjson.loads(m["data"]) for m in msgs)
    assert first["log_id"] == r1.log_id and first["prev"] == "" and first["bus"] == key_prefix
    assert second["prev"] == r1.log_id and second["prev_t"] == r1.log_id
    assert (
        TradeEvent.from_dict(
            {k: v for k, v in second.items() if k not in ("log_id", "prev", "prev_t", "bus")}
        )
        == e2
    )
    assert bus.known_symbols() == ["PUBTEST"]
    assert [ev for _, ev in bus.read_log("PUBTEST")] == [e1, e2]
    assert [ev for _, ev in bus.read_log("PUBTEST", after=r1.log_id)] == [e2]
    ps.close()


@pytest.mark.parametrize("bad", [{"event_type": "order.created"}, "order.created", None, 42])
def test_publish_refuses_non_events_and_leaves_no_trace(bus, redis_client, key_prefix, bad):
    with pytest.raises(TypeError, match="TradeEvent"):
        bus.publish(bad)
    assert not list(redis_client.scan_iter(f"{key_prefix}:*"))


def test_oversized_event_never_reaches_redis(redis_url, key_prefix, redis_client):
    with RedisEventBus(redis_url, key_prefix=key_prefix, max_event_bytes=512) as bus:
        with pytest.raises(EventValidationError, match="limit is 512"):
            bus.publish(order(note="x" * 600))
        with pytest.raises(EventValidationError):
            bus.publish_many([order(1), order(2, note="x" * 600), order(3)])
    assert not list(redis_client.scan_iter(f"{key_prefix}:*"))


def test_publish_many_is_ordered_and_complete(bus, redis_client, key_prefix):
    events = [order(i, symbol=("AAA" if i % 2 else "BBB")) for i in range(50)]
    receipts = bus.publish_many(events)
    assert [r.event_id for r in receipts] == [e.event_id for e in events]
    assert [e for _, e in bus.read_log("AAA")] == events[1::2]
    assert [e for _, e in bus.read_log("BBB")] == events[0::2]
    assert bus.known_symbols() == ["AAA", "BBB"]
    assert bus.publish_many([]) == []


def test_log_is_trimmed_approximately(redis_url, key_prefix, redis_client):
    with RedisEventBus(redis_url, key_prefix=key_prefix, log_maxlen=100) as bus:
        for _ in range(10):
            bus.publish_many([order(i) for i in range(100)])
    assert 100 <= redis_client.xlen(f"{key_prefix}:{{XAUUSD}}:log") < 1000


def test_apply_state_inline(redis_url, key_prefix):
    with RedisEventBus(redis_url, key_prefix=key_prefix, apply_state=True) as bus:
        bus.publish(order(7))
        assert bus.get_order("XAUUSD", "7")["status"] == "pending"
        bus.publish_many(
            [
                TradeEvent.create_order_partially_filled(
                    symbol="XAUUSD", order_id="7", fill_price=2000.0, fill_volume=0.05
                )
            ]
            * 2
        )
        assert bus.get_order("XAUUSD", "7")["filled_volume"] == "0.05"  # the same event twice: once
        assert [o["order_id"] for o in bus.get_open_orders("XAUUSD")] == ["7"]
        assert (
            bus.get_order("XAUUSD", "nope") is None and bus.get_position("XAUUSD", "nope") is None
        )


def test_script_cache_loss_is_survived(key_prefix):
    with (
        EmbeddedRedis() as server,
        RedisEventBus(server.url, key_prefix=key_prefix, apply_state=True) as bus,
    ):
        bus.publish(order(1))
        bus.client.script_flush()
        bus.publish(order(2))  # EVALSHA -> NOSCRIPT -> EVAL
        bus.client.script_flush()
        bus.publish_many([order(3), order(4)])
        assert [e.data["order_id"] for _, e in bus.read_log("XAUUSD")] == ["1", "2", "3", "4"]
        assert len(bus.get_open_orders("XAUUSD")) == 4


def test_publish_while_redis_is_down_raises_connection_error(key_prefix):
    server = EmbeddedRedis().start()
    try:
        bus = RedisEventBus(server.url, key_prefix=key_prefix)
        bus.publish(order(1))
    finally:
        server.close()
    with pytest.raises(redis.ConnectionError) as info:
        bus.publish(order(2))
    assert isinstance(info.value, BusConnectionError) and f"127.0.0.1:{server.port}" in str(
        info.value
    )
    assert not bus.is_connected
    bus.close()


def test_dispatcher_staged_in_the_same_transaction(key_prefix):
    pytest.importorskip("celery")
    from bus.dispatch import Dispatcher

    # Given a broker on the bus's own server (another database), task messages join the MULTI
    with EmbeddedRedis() as server:
        base = server.url.rsplit("/", 1)[0]
        dispatcher = Dispatcher(f"{base}/1")
        with RedisEventBus(f"{base}/0", key_prefix=key_prefix, dispatcher=dispatcher) as bus:
            assert dispatcher.stages_in_bus_pipeline
            r = bus.publish(order(1))
            rs = bus.publish_many([order(2), order(3)])
        broker = redis.Redis.from_url(f"{base}/1")
        assert set(r.dispatched) >= {"state"} and r.not_dispatched == ()
        assert all(x.dispatched == r.dispatched for x in rs)
        assert broker.llen("tradebus.state") == 3
        assert (
            redis.Redis.from_url(f"{base}/0").zcard(f"{key_prefix}:{{XAUUSD}}:dispatch:pending")
            == 0
        )
        broker.close()


def test_dispatcher_down_leaves_event_logged_and_pending(key_prefix):
    pytest.importorskip("celery")
    from bus.dispatch import Dispatcher
    from bus.embedded import free_port

    # Given a broker that does not answer (a separate server that is not running)
    with EmbeddedRedis() as server:
        dispatcher = Dispatcher(f"redis://127.0.0.1:{free_port()}/0")
        with RedisEventBus(server.url, key_prefix=key_prefix, dispatcher=dispatcher) as bus:
            assert not dispatcher.stages_in_bus_pipeline
            r = bus.publish(order(1))
            assert r.dispatched == () and "state" in r.not_dispatched
            assert [e.event_id for _, e in bus.read_log("XAUUSD")] == [r.event_id]
            pending = bus.client.zrange(bus.keys.pending_dispatch_for("XAUUSD"), 0, -1)
            assert pending == [r.log_id.encode()]
