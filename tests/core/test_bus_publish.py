"""publish / publish_many against a real Redis, for the blocking and the asyncio bus (make_bus): one atomic
step, receipts, nothing on bad input."""

from __future__ import annotations

import orjson
import pytest
import redis

from bus import BusConnectionError, EventValidationError, TradeEvent
from bus.core.wire import BROADCAST_META
from bus.dispatch.routing import RoutingTable
from bus.embedded import EmbeddedRedis

pytestmark = pytest.mark.redis


def order(i: int = 1, symbol: str = "XAUUSD", **extra) -> TradeEvent:
    return TradeEvent.create_order_created(symbol=symbol, order_id=str(i), order_type="BUY", price=2000.5,
                                           volume=0.1, **extra)  # fmt: skip


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
    assert log[0][1] == {"type": "order.created", "event": e1.to_json(), "n": "1"}  # n: its number in the log
    assert log[1][1]["n"] == "2"
    msgs = [ps.get_message(timeout=2) for _ in range(2)]
    first, second = (orjson.loads(m["data"]) for m in msgs)
    assert first["log_id"] == r1.log_id and first["prev"] == "" and first["bus"] == key_prefix
    assert second["prev"] == r1.log_id and second["prev_t"] == r1.log_id
    assert (first["n"], second["n"]) == (1, 2)
    assert strip(second) == e2
    assert bus.known_symbols() == ["PUBTEST"]
    assert [ev for _, ev in bus.read_log("PUBTEST")] == [e1, e2]
    assert [ev for _, ev in bus.read_log("PUBTEST", after=r1.log_id)] == [e2]
    ps.close()


@pytest.mark.parametrize("bad", [{"event_type": "order.created"}, "order.created", None, 42])
def test_publish_refuses_non_events_and_leaves_no_trace(bus, redis_client, key_prefix, bad):
    with pytest.raises(TypeError, match="TradeEvent"):
        bus.publish(bad)
    assert not list(redis_client.scan_iter(f"{key_prefix}:*"))


def test_oversized_event_never_reaches_redis(make_bus, redis_url, key_prefix, redis_client):
    with make_bus(redis_url, key_prefix=key_prefix, max_event_bytes=512) as bus:
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


def test_log_is_trimmed_approximately(make_bus, redis_url, key_prefix, redis_client):
    with make_bus(redis_url, key_prefix=key_prefix, log_maxlen=100) as bus:
        for _ in range(10):
            bus.publish_many([order(i) for i in range(100)])
    assert 100 <= redis_client.xlen(f"{key_prefix}:{{XAUUSD}}:log") < 1000


def test_apply_state_inline(make_bus, redis_url, key_prefix):
    with make_bus(redis_url, key_prefix=key_prefix, apply_state=True) as bus:
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
        assert bus.get_order("XAUUSD", "nope") is None and bus.get_position("XAUUSD", "nope") is None


def test_script_cache_loss_is_survived(make_bus, key_prefix):
    with (
        EmbeddedRedis() as server,
        make_bus(server.url, key_prefix=key_prefix, apply_state=True) as bus,
    ):
        bus.publish(order(1))
        bus.client.script_flush()
        bus.publish(order(2))  # EVALSHA -> NOSCRIPT -> EVAL
        bus.client.script_flush()
        bus.publish_many([order(3), order(4)])
        assert [e.data["order_id"] for _, e in bus.read_log("XAUUSD")] == ["1", "2", "3", "4"]
        assert len(bus.get_open_orders("XAUUSD")) == 4


def test_publish_while_redis_is_down_raises_connection_error(make_bus, key_prefix):
    server = EmbeddedRedis().start()
    try:
        bus = make_bus(server.url, key_prefix=key_prefix)
        bus.publish(order(1))
    finally:
        server.close()
    with pytest.raises(redis.ConnectionError) as info:
        bus.publish(order(2))
    assert isinstance(info.value, BusConnectionError) and f"127.0.0.1:{server.port}" in str(info.value)
    assert not bus.is_connected
    bus.close()


def test_dispatcher_staged_in_the_same_transaction(make_bus, key_prefix):
    pytest.importorskip("celery")
    from bus.dispatch.dispatcher import Dispatcher

    # Given a broker on the bus's own server (another database), task messages join the MULTI
    with EmbeddedRedis() as server:
        base = server.url.rsplit("/", 1)[0]
        dispatcher = Dispatcher(f"{base}/1", RoutingTable.default().with_modes(state="event", risk="event"))
        with make_bus(f"{base}/0", key_prefix=key_prefix, dispatcher=dispatcher) as bus:
            assert dispatcher.stages_in_bus_pipeline
            r = bus.publish(order(1))
            rs = bus.publish_many([order(2), order(3)])
        broker = redis.Redis.from_url(f"{base}/1")
        assert set(r.dispatched) >= {"state"} and r.not_dispatched == ()
        assert all(x.dispatched == r.dispatched for x in rs)
        assert broker.llen("tradebus.state") == 3
        assert redis.Redis.from_url(f"{base}/0").zcard(f"{key_prefix}:{{XAUUSD}}:dispatch:pending") == 0
        broker.close()


def test_dispatcher_down_leaves_event_logged_and_pending(make_bus, key_prefix):
    pytest.importorskip("celery")
    from bus.dispatch.dispatcher import Dispatcher
    from bus.embedded import free_port

    # Given a broker that does not answer (a separate server that is not running)
    with EmbeddedRedis() as server:
        dispatcher = Dispatcher(
            f"redis://127.0.0.1:{free_port()}/0", RoutingTable.default().with_modes(state="event", risk="event")
        )
        with make_bus(server.url, key_prefix=key_prefix, dispatcher=dispatcher) as bus:
            assert not dispatcher.stages_in_bus_pipeline
            r = bus.publish(order(1))
            assert r.dispatched == () and "state" in r.not_dispatched
            assert [e.event_id for _, e in bus.read_log("XAUUSD")] == [r.event_id]
            pending = bus.client.zrange(bus.keys.pending_dispatch_for("XAUUSD"), 0, -1, withscores=True)
            # scored with the server's clock (the log id's ms), as redispatch_missed compares it
            assert pending == [(r.log_id.encode(), float(r.log_id.split("-")[0]))]


# --- publish_many: one script call per run of consecutive same-symbol events ----------------------


def signal(i: int, symbol: str) -> TradeEvent:
    return TradeEvent.create_signal_generated(symbol=symbol, signal_id=f"s{i}", direction="LONG", strategy="m")


def mixed_batch(a: str, b: str, c: str) -> list[TradeEvent]:
    """Runs of 4, 2, 1, 1, 3 and 1 events over three symbols, with two event types inside the runs."""
    spec = [(a, "o"), (a, "s"), (a, "o"), (a, "o"), (b, "s"), (b, "o"), (a, "s"), (c, "o"),
            (b, "o"), (b, "s"), (b, "o"), (a, "o")]  # fmt: skip
    return [order(i, sym) if kind == "o" else signal(i, sym) for i, (sym, kind) in enumerate(spec)]


def broadcasts(ps, key_prefix: str, n: int) -> list[dict]:
    """The next ``n`` broadcasts of this bus (the shared server carries other tests' too)."""
    out: list[dict] = []
    while len(out) < n:
        m = ps.get_message(timeout=5)
        assert m is not None, f"only {len(out)} of {n} broadcasts arrived"
        if m["type"] == "pmessage" and (obj := orjson.loads(m["data"]))["bus"] == key_prefix:
            out.append(obj)
    return out


def strip(obj: dict) -> TradeEvent:
    return TradeEvent.from_dict({k: v for k, v in obj.items() if k not in BROADCAST_META})


@pytest.fixture
def pubsub(bus):
    ps = redis.Redis.from_url(bus.url).pubsub()
    yield ps
    ps.close()


@pytest.mark.parametrize("run_max", [100, 3, 1])  # whole runs, runs split across calls, one call per event
def test_publish_many_mixed_symbols_keeps_order_metadata_and_receipts(bus, redis_client, key_prefix, run_max, pubsub):
    bus.publish_run_max = run_max
    ps = pubsub
    ps.psubscribe("trades:PMA:*", "trades:PMB:*", "trades:PMC:*")
    for _ in range(3):
        ps.get_message(timeout=2)  # psubscribe confirmations
    # Given heads that already exist for one symbol (the batch's first prev/prev_t must chain to them)
    before = [bus.publish(order(100, "PMA")), bus.publish(signal(101, "PMA"))]
    events = mixed_batch("PMA", "PMB", "PMC")
    receipts = bus.publish_many(events)

    # Then receipts match the events one to one, each with its own log entry
    assert [r.event_id for r in receipts] == [e.event_id for e in events]
    assert all(r.subscribers == 1 and r.dispatched == r.not_dispatched == () for r in receipts)
    assert len({(e.symbol, r.log_id) for e, r in zip(events, receipts, strict=True)}) == len(events)
    for symbol in ("PMA", "PMB", "PMC"):
        mine = [(r.log_id, e) for r, e in zip(receipts, events, strict=True) if e.symbol == symbol]
        assert bus.read_log(symbol, after=before[-1].log_id if symbol == "PMA" else "-") == mine
        heads = redis_client.hgetall(bus.keys.heads(symbol))
        assert heads["_"] == mine[-1][0]
        assert heads["#"] == str(len(mine) + (len(before) if symbol == "PMA" else 0))  # entries numbered
        for t in {e.event_type.value for _, e in mine}:  # and each type's last id
            assert heads[t] == [lid for lid, e in mine if e.event_type.value == t][-1]
    # and the log ids of the whole batch follow its order (stream ids are time based)
    ms = [int(r.log_id.split("-")[0]) for r in receipts]
    assert ms == sorted(ms)

    # And the broadcasts come in batch order with prev/prev_t chaining per symbol and per symbol+type
    got = broadcasts(ps, key_prefix, len(before) + len(events))[len(before) :]
    assert [strip(o) for o in got] == events
    assert [o["log_id"] for o in got] == [r.log_id for r in receipts]
    last = {"PMA": before[1].log_id}
    last_t = {("PMA", "order.created"): before[0].log_id, ("PMA", "signal.generated"): before[1].log_id}
    for o, e in zip(got, events, strict=True):
        t = (e.symbol, e.event_type.value)
        assert (o["prev"], o["prev_t"]) == (last.get(e.symbol, ""), last_t.get(t, "")), e.data
        last[e.symbol] = last_t[t] = o["log_id"]
    assert bus.known_symbols() == ["PMA", "PMB", "PMC"]


def test_long_same_symbol_batch_is_split_into_bounded_script_calls(bus, redis_client, key_prefix):
    bus.publish_run_max = 7
    events = [order(i, "PMD") if i % 3 else signal(i, "PMD") for i in range(50)]
    receipts = bus.publish_many(events)
    assert [e for _, e in bus.read_log("PMD")] == events
    assert [lid for lid, _ in bus.read_log("PMD")] == [r.log_id for r in receipts]
    assert redis_client.hget(bus.keys.heads("PMD"), "_") == receipts[-1].log_id


@pytest.mark.parametrize(
    "bad_at, bad",
    [(0, None), (5, {"event_type": "order.created"}), (-1, "order.created"), (3, order(9, note="x" * 5000))],
)
def test_an_invalid_event_anywhere_in_a_batch_sends_nothing(make_bus, redis_url, key_prefix, redis_client, bad_at, bad):
    with make_bus(redis_url, key_prefix=key_prefix, max_event_bytes=4096) as bus:
        bus.publish(order(1, "PME"))
        snapshot = {k: redis_client.dump(k) for k in redis_client.scan_iter(f"{key_prefix}:*")}
        events: list = mixed_batch("PME", "PMF", "PMG")
        events.insert(bad_at if bad_at >= 0 else len(events), bad)
        with pytest.raises((TypeError, EventValidationError)):
            bus.publish_many(events)
        # nothing of the batch reached Redis: no log entry, no head, no new symbol
        assert {k: redis_client.dump(k) for k in redis_client.scan_iter(f"{key_prefix}:*")} == snapshot
        assert bus.known_symbols() == ["PME"]


class TrackingDispatcher:
    """A separate-broker dispatcher (not staged) that routes order events only and records send_many."""

    stages_in_bus_pipeline = False

    class Route:
        name = "state"

    def __init__(self) -> None:
        self.calls: list[tuple[list, list]] = []

    def attach(self, client, keys):
        return self

    def stage(self, pipe, event, payload, routes):
        raise AssertionError("a separate-broker dispatcher is never asked to stage")

    def routes_for(self, event):
        return (self.Route(),) if event.event_type.value.startswith("order.") else ()

    def send_many(self, items, log_ids):
        self.calls.append((items, list(log_ids)))
        return [(tuple(x.name for x in routes), ()) for _, _, routes in items]


def test_publish_many_tracks_pending_dispatch_per_routed_event(make_bus, redis_url, key_prefix, redis_client):
    dispatcher = TrackingDispatcher()
    with make_bus(redis_url, key_prefix=key_prefix, dispatcher=dispatcher) as bus:
        events = mixed_batch("PMH", "PMI", "PMJ")
        receipts = bus.publish_many(events)
    routed = [(e, r) for e, r in zip(events, receipts, strict=True) if e.event_type.value.startswith("order.")]
    # one send_many for the batch, with each routed event's own log id, in order
    [(items, log_ids)] = dispatcher.calls
    assert [e for e, _, _ in items] == [e for e, _ in routed]
    assert log_ids == [r.log_id for _, r in routed]
    routed_ids = {e.event_id for e, _ in routed}
    assert [r.dispatched for r in receipts] == [("state",) if r.event_id in routed_ids else () for r in receipts]
    # the script ZADDed exactly the routed events (this dispatcher never ZREMs) with a ms score
    pending = {}
    for symbol in ("PMH", "PMI", "PMJ"):
        pending.update(redis_client.zrange(f"{key_prefix}:{{{symbol}}}:dispatch:pending", 0, -1, withscores=True))
    assert set(pending) == set(log_ids)
    assert all(abs(score - int(lid.split("-")[0])) < 60_000 for lid, score in pending.items())


def test_apply_state_inline_with_a_mixed_batch(make_bus, redis_url, key_prefix):
    with make_bus(redis_url, key_prefix=key_prefix, apply_state=True) as bus:
        fill = TradeEvent.create_order_partially_filled(symbol="PMK", order_id="1", fill_price=2000.0, fill_volume=0.05)
        bus.publish_many([order(1, "PMK"), fill, order(2, "PML"), fill, order(3, "PMK"), order(4, "PMK")])
        assert bus.get_order("PMK", "1")["filled_volume"] == "0.05"
        assert sorted(o["order_id"] for o in bus.get_open_orders("PMK")) == ["1", "3", "4"]
        assert [o["order_id"] for o in bus.get_open_orders("PML")] == ["2"]


def test_script_cache_loss_with_only_the_single_event_script_reloaded(make_bus, key_prefix):
    with EmbeddedRedis() as server, make_bus(server.url, key_prefix=key_prefix) as bus:
        bus.publish_many([order(1, "PMM"), order(2, "PMM")])
        bus.client.script_flush()
        bus.publish(order(3, "PMM"))  # reloads publish.lua only
        events = [order(4, "PMM"), order(5, "PMN"), order(6, "PMM"), order(7, "PMM")]
        receipts = bus.publish_many(events)  # publish_many.lua: NOSCRIPT -> EVAL, in order
        assert [e.data["order_id"] for _, e in bus.read_log("PMM")] == ["1", "2", "3", "4", "6", "7"]
        assert [lid for lid, _ in bus.read_log("PMN")] == [receipts[1].log_id]
