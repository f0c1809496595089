"""Task messages staged in the publish script (a broker on the bus's server): one EVALSHA per publish, no
MULTI and no SCRIPT LOAD; a message the broker refuses leaves its event pending for beat's re-dispatch
(at-least-once tasks). Each test runs its own redis-server: it reads and resets INFO commandstats."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from bus import TradeEvent
from bus.dispatch.routing import RoutingTable
from bus.embedded import EmbeddedRedis

pytestmark = pytest.mark.redis
celery = pytest.importorskip("celery")

EVENT_ROUTES = RoutingTable.default().with_modes(state="event", risk="event")


def order(i: int, symbol: str = "STG") -> TradeEvent:
    return TradeEvent.create_order_created(symbol=symbol, order_id=str(i), order_type="BUY", price=2000.5, volume=0.1)


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as s:
        yield s


def same_server_bus(make_bus: Any, server: EmbeddedRedis, key_prefix: str) -> Any:
    from bus.dispatch.dispatcher import Dispatcher

    base = server.url.rsplit("/", 1)[0]
    bus = make_bus(f"{base}/0", key_prefix=key_prefix, dispatcher=Dispatcher(f"{base}/1", EVENT_ROUTES))
    assert bus.dispatcher.stages_in_bus_pipeline
    return bus


def calls(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}


def queued(broker: redis.Redis, queue: str) -> list[str]:
    """The task id (``event_id:route``) of each message on ``queue``, oldest first."""
    return [orjson.loads(raw)["headers"]["id"] for raw in reversed(broker.lrange(queue, 0, -1))]


def test_task_messages_ride_in_the_publish_script_one_call_each(make_bus, server, key_prefix) -> None:
    bus = same_server_bus(make_bus, server, key_prefix)
    base = server.url.rsplit("/", 1)[0]
    admin, broker = redis.Redis.from_url(f"{base}/0"), redis.Redis.from_url(f"{base}/1")
    # the symbol's first publish also records it (SADD); each script's first call is an EVAL
    warm = [*bus.publish_many([order(-2), order(-1)]), bus.publish(order(0))]
    admin.config_resetstat()
    # When events with event routes are published one by one and as a batch
    singles = [order(i) for i in range(1, 6)]
    receipts = [bus.publish(e) for e in singles] + bus.publish_many([order(i) for i in range(6, 10)])
    # Then each publish was one script call carrying its task messages: no MULTI, no SCRIPT LOAD
    stats = calls(admin)
    assert stats.get("evalsha") == len(singles) + 1, stats
    assert not {"multi", "exec", "script|load", "eval"} & set(stats), sorted(stats.items())
    assert all(r.dispatched == ("state", "risk") and r.not_dispatched == () for r in receipts)
    # and every message is on its queue once, in publish order, in the broker's database (not the bus's)
    for queue, route in (("tradebus.state", "state"), ("tradebus.risk", "risk")):
        assert queued(broker, queue) == [f"{r.event_id}:{route}" for r in (*warm, *receipts)]
    assert not admin.exists("tradebus.state") and admin.dbsize() > 0  # SELECT inside the script left db 0 alone
    assert admin.zcard(f"{key_prefix}:{{STG}}:dispatch:pending") == 0
    admin.close()
    broker.close()


def test_after_a_script_cache_loss_the_messages_go_out_once(make_bus, server, key_prefix) -> None:
    bus = same_server_bus(make_bus, server, key_prefix)
    broker = redis.Redis.from_url(server.url.rsplit("/", 1)[0] + "/1")
    first = bus.publish(order(0))
    bus.client.script_flush()
    r = bus.publish(order(1))  # NOSCRIPT: nothing ran; EVAL runs it (and its messages) once
    bus.client.script_flush()
    rs = bus.publish_many([order(2), order(3)])
    assert queued(broker, "tradebus.state") == [f"{x.event_id}:state" for x in (first, r, *rs)]
    broker.close()


def test_a_message_the_broker_refuses_leaves_its_event_pending_for_redispatch(make_bus, server, key_prefix) -> None:
    bus = same_server_bus(make_bus, server, key_prefix)
    broker = redis.Redis.from_url(server.url.rsplit("/", 1)[0] + "/1")
    bus.publish(order(0, "REF"))
    # Given the state queue's key holding something that is not a list (LPUSH fails with WRONGTYPE)
    broker.set("tradebus.state", "not a list")
    # When one event and a batch are published
    r = bus.publish(order(1, "REF"))
    rs = bus.publish_many([order(2, "REF"), order(3, "OTHER")])
    # Then every event is logged and broadcast (durable publish), its routes reported not dispatched,
    # and the script recorded it pending, as with a separate broker that refused it
    for receipt, symbol in ((r, "REF"), (rs[0], "REF"), (rs[1], "OTHER")):
        assert receipt.dispatched == () and receipt.not_dispatched == ("state", "risk")
        assert receipt.log_id in [lid for lid, _ in bus.read_log(symbol)]
        pending = bus.client.zrange(bus.keys.pending_dispatch_for(symbol), 0, -1)
        assert receipt.log_id.encode() in pending
    # and once the broker takes messages again, beat's re-dispatch sends them
    broker.delete("tradebus.state")
    assert bus.dispatcher.redispatch_missed(grace_seconds=0) == 3
    assert sorted(queued(broker, "tradebus.state")) == sorted(f"{x.event_id}:state" for x in (r, *rs))
    assert bus.client.zcard(bus.keys.pending_dispatch_for("REF")) == 0
    broker.close()


def test_outbox_publish_a_refused_message_leaves_its_event_pending_and_a_resend_adds_none(server, key_prefix) -> None:
    """The exactly-once outbox's script (publish_sequenced.lua) runs the staged messages the same way."""
    from bus.core.bus import RedisEventBus
    from bus.core.sequenced import SequencedPublisher
    from bus.dispatch.dispatcher import Dispatcher

    base = server.url.rsplit("/", 1)[0]
    broker = redis.Redis.from_url(f"{base}/1")
    dispatcher = Dispatcher(f"{base}/1", EVENT_ROUTES)
    with RedisEventBus(f"{base}/0", key_prefix=key_prefix, dispatcher=dispatcher) as bus:
        assert dispatcher.stages_in_bus_pipeline
        outbox = SequencedPublisher(bus.publisher, source="executor", origin="test")
        ok = outbox.publish([(1, order(1, "SEQ"))])[0]
        broker.set("tradebus.risk", "not a list")  # Given the risk queue refusing LPUSH
        refused = outbox.publish([(2, order(2, "SEQ")), (3, order(3, "SEQ"))])
        again = outbox.publish([(3, order(3, "SEQ"))])[0]  # a resend of number 3 (a crash before delete)
        pending = bus.client.zrange(bus.keys.pending_dispatch_for("SEQ"), 0, -1)
    assert ok.dispatched == ("state", "risk") and ok.not_dispatched == ()
    assert all(r.dispatched == () and r.not_dispatched == ("state", "risk") for r in refused)
    assert sorted(pending) == sorted(r.log_id.encode() for r in refused)
    assert again.already_logged and again.dispatched == ()
    # the state messages of the refused events went out with them (re-dispatch resends them: same task ids)
    assert queued(broker, "tradebus.state") == [f"{r.event_id}:state" for r in (ok, *refused)]
    broker.close()
