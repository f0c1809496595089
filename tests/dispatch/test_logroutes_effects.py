"""Log-route effects and their edges, driven directly: risk's breach published with the batch, replay to a
log route, wake-ups on a separate broker that is down."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
import redis

from bus.core.bus import RedisEventBus
from bus.dispatch.dispatcher import Dispatcher
from bus.dispatch.logroutes.config import LogRouteConfig
from bus.dispatch.logroutes.drain import DONE, Drainer
from bus.dispatch.logroutes.effects import LogRouteError, effect_for, register_effect
from bus.dispatch.logroutes.monitor import GroupLag, health, route_lag, stale
from bus.dispatch.logroutes.replay import LeaseBusyError, replay_range
from bus.dispatch.messages import redis_queue_key
from bus.dispatch.routing import RoutingTable
from bus.domain.risk import RiskLimits
from bus.domain.risklog import check_batch
from bus.embedded import free_port
from bus.events.model import TradeEvent, TradeEventType
from tests.helpers import wait_for

pytestmark = [pytest.mark.redis]

FAST = LogRouteConfig(batch=50, claim_after=0.4)
LIMITS = RiskLimits(max_order_volume=Decimal(5))


@register_effect("tradebus_test.risk_limited")
def risk_limited(batch):
    check_batch(batch, LIMITS)


@pytest.fixture
def bus(settings, broker_url):
    # the default routes, risk evaluating LIMITS (the worker's would read TRADEBUS_RISK_*)
    table = RoutingTable(replace(r, task="tradebus_test.risk_limited") if r.name == "risk" else r
                         for r in RoutingTable.default())  # fmt: skip
    dispatcher = Dispatcher(broker_url, table, settings=settings, log_routes=FAST)
    with RedisEventBus(settings.bus_url, key_prefix=settings.key_prefix, dispatcher=dispatcher) as b:
        yield b


def breaches(bus: RedisEventBus, symbol: str = "XAUUSD") -> list[TradeEvent]:
    return [e for _, e in bus.read_log(symbol) if e.event_type is TradeEventType.RISK_LIMIT_BREACHED]


def test_a_breach_is_published_with_its_batch_exactly_once(bus, broker_url, settings) -> None:
    big = TradeEvent.create_order_created("XAUUSD", "big", "BUY", 2000.0, 8.0)
    bus.publish_many([TradeEvent.create_order_created("XAUUSD", f"o{i}", "BUY", 2000.0, 1.0) for i in range(3)])
    bus.publish(big)
    risk = bus.dispatcher.routing.get("risk")

    def evaluates_then_dies(batch):
        risk_limited(batch)  # the breach is staged on the transaction...
        raise KeyboardInterrupt  # ...which never commits: the drainer is gone

    with pytest.raises(KeyboardInterrupt):
        Drainer(bus.client, bus.keys, risk, "XAUUSD", evaluates_then_dies, config=FAST, publisher=bus.publisher).run()
    assert breaches(bus) == []
    drain = Drainer(bus.client, bus.keys, risk, "XAUUSD", effect_for(risk), config=FAST, publisher=bus.publisher)
    wait_for(lambda: drain.run().status == DONE, what="the next drain after the lease expired")
    (breach,) = breaches(bus)
    assert (breach.data["rule"], breach.causation_id) == ("max_order_volume", big.event_id)
    # the breach went through the bus: routed to notify (an event route) in the same transaction
    broker = redis.Redis.from_url(broker_url)
    notify = [m for m in broker.lrange(redis_queue_key("tradebus.notify", 0, f"{settings.key_prefix}:"), 0, -1)
              if f"{breach.event_id}:notify".encode() in m]  # fmt: skip
    broker.close()
    assert len(notify) == 1
    # a later drain reads the breach entry (not the risk route's) and raises nothing again
    assert drain.run().status == DONE and len(breaches(bus)) == 1


def test_replay_to_a_log_route_reapplies_replayable_effects_only(bus) -> None:
    bus.publish(TradeEvent.create_order_created("XAUUSD", "r1", "BUY", 2000.0, 1.0))
    bus.publish(TradeEvent.create_order_partially_filled("XAUUSD", "r1", 2000.0, 0.25))
    state, risk = bus.dispatcher.routing.get("state"), bus.dispatcher.routing.get("risk")
    assert Drainer(bus.client, bus.keys, state, "XAUUSD", effect_for(state), config=FAST).run().status == DONE
    # state is replayable (idempotent per event): a replay applies the range again and changes nothing
    assert replay_range(bus.client, bus.keys, state, "XAUUSD", effect_for(state), token="r", config=FAST) == 2
    assert bus.get_order("XAUUSD", "r1")["filled_volume"] == "0.25"
    assert not bus.client.exists(bus.keys.drain_lease("state", "XAUUSD"))  # the lease is given back
    with pytest.raises(LogRouteError, match="not registered as replayable"):
        replay_range(bus.client, bus.keys, risk, "XAUUSD", effect_for(risk), token="r", config=FAST)
    bus.client.set(bus.keys.drain_lease("state", "XAUUSD"), "a-drainer", px=5000)
    with pytest.raises(LeaseBusyError):  # never interleaved with a drain of the same symbol
        replay_range(bus.client, bus.keys, state, "XAUUSD", effect_for(state), token="r", config=FAST)


def test_wake_up_not_sent_on_a_separate_broker_that_is_down_is_covered_by_beat(settings) -> None:
    dispatcher = Dispatcher(f"redis://127.0.0.1:{free_port()}/0", settings=settings, log_routes=FAST)
    with RedisEventBus(settings.bus_url, key_prefix=settings.key_prefix, dispatcher=dispatcher) as bus:
        assert not dispatcher.stages_in_bus_pipeline
        receipt = bus.publish(TradeEvent.create_order_created("XAUUSD", "d1", "BUY", 2000.0, 1.0))
        # logged, the flags set, the wake-up not sent: the log routes still count as dispatched
        assert set(receipt.dispatched) == {"state", "risk"} and receipt.not_dispatched == ()
        assert bus.client.exists(bus.keys.wake_flag("state", "XAUUSD"))
        # the next publish finds the flag set and sends nothing; beat's wake job finds the group
        bus.publish(TradeEvent.create_order_created("XAUUSD", "d2", "BUY", 2000.0, 1.0))
        wait_for(lambda: {g.route for g in stale(route_lag(bus.client, bus.keys, dispatcher.routing), 100)}
                 == {"state", "risk"}, what="both groups stale for beat")  # fmt: skip


def test_doctor_health_of_the_groups() -> None:
    def g(lag: int, drainer: bool = False, waiting_ms: int = 0, unread: int | None = None) -> GroupLag:
        return GroupLag("state", "XAUUSD", lag, 0, "0-0", drainer, waiting_ms, lag if unread is None else unread)

    assert health([], stuck_after_ms=1000, log_maxlen=100) is None  # no log route has a group yet
    assert health([g(0)], stuck_after_ms=1000, log_maxlen=100)[0] == "ok"
    assert health([g(5, waiting_ms=500)], stuck_after_ms=1000, log_maxlen=100)[0] == "ok"  # beat will come
    status, detail, fix = health([g(5, waiting_ms=5000)], stuck_after_ms=1000, log_maxlen=100)
    assert status == "warn" and "no drainer" in detail and "state/XAUUSD" in detail and "beat" in fix
    status, detail, _ = health([g(60, drainer=True, waiting_ms=5000)], stuck_after_ms=1000, log_maxlen=100)
    assert status == "warn" and "TRADEBUS_LOG_MAXLEN" in detail  # trimming would overtake the route
    # entries of types the route does not take count too: trimming takes any unread entry
    status, detail, _ = health([g(0, drainer=True, unread=60)], stuck_after_ms=1000, log_maxlen=100)
    assert status == "warn" and "TRADEBUS_LOG_MAXLEN" in detail


def test_beat_trim_keeps_what_a_log_route_has_not_acknowledged(bus) -> None:
    from bus.domain.reconcile import trim_logs

    bus.publish_many([TradeEvent.create_order_created("XAUUSD", f"t{i}", "BUY", 1.0, 1.0) for i in range(10)])
    for route in (bus.dispatcher.routing.get("state"), bus.dispatcher.routing.get("risk")):
        drain = Drainer(bus.client, bus.keys, route, "XAUUSD", effect_for(route), config=FAST, publisher=bus.publisher)
        assert drain.run().status == DONE
    unread = bus.publish_many([TradeEvent.create_order_created("XAUUSD", f"u{i}", "BUY", 1.0, 1.0) for i in range(5)])
    report = trim_logs(bus.client, bus.keys, token=1, retention_s=0, maxlen=1)
    assert report["held_by_log_routes"] == ["XAUUSD"]
    # everything the routes have acknowledged goes; the 5 entries they have not read yet stay
    assert [log_id for log_id, _ in bus.read_log("XAUUSD")] == [r.log_id for r in unread]


def test_events_an_executors_outbox_sends_wake_the_log_routes(bus, broker_url, settings) -> None:
    from bus.core.sequenced import SequencedPublisher

    sequenced = SequencedPublisher(bus.publisher, "executor-1", "outbox-a")
    first = [TradeEvent.create_order_created("XAUUSD", f"s{i}", "BUY", 1.0, 1.0) for i in range(3)]
    receipts = sequenced.publish(list(enumerate(first, start=1)))
    assert all({"state", "risk"} <= set(r.dispatched) for r in receipts)
    again = sequenced.publish([(3, first[2])])  # a resend: already logged, wakes nothing
    assert again[0].already_logged
    broker = redis.Redis.from_url(broker_url)
    wakes = broker.lrange(redis_queue_key("tradebus.state", 0, f"{settings.key_prefix}:"), 0, -1)
    broker.close()
    assert len(wakes) == 1  # one wake-up for the run, by the script that logged it
    state = bus.dispatcher.routing.get("state")
    assert Drainer(bus.client, bus.keys, state, "XAUUSD", effect_for(state), config=FAST).run().status == DONE
    assert all(bus.get_order("XAUUSD", f"s{i}") for i in range(3))
