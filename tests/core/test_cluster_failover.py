"""A 3-master Redis Cluster with a replica each, which the test fails over: ``CLUSTER FAILOVER`` on a replica (a
planned switch), then a master SIGKILLed (its replica is promoted after the node timeout). Publishes wait for
one replica (TRADEBUS_PUBLISH_REPLICAS=1, replicated publish) and are retried by the caller within a bound;
a subscriber heals from the log; the log routes' drains resume on the new masters; nothing confirmed is lost.
The tests with a Celery broker run twice: on a Redis database, and on RabbitMQ (a vhost of their own)."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bus import RedisEventBus, TradeEvent
from bus.config import Settings
from bus.core.durability import NotReplicatedError
from bus.core.state import get_order
from bus.dispatch.dispatcher import Dispatcher
from bus.dispatch.logroutes.config import LogRouteConfig
from bus.dispatch.logroutes.drain import DONE, Drainer
from bus.dispatch.logroutes.effects import effect_for
from bus.dispatch.routing import RoutingTable
from bus.errors import BusError
from tests.helpers import wait_for
from tests.logroute_effects import applied, routes_file
from tests.rabbitmq import amqp_url
from tests.topology_servers import ClusterSet
from tests.worker.test_logroutes_workers import log_worker, publisher, tail

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.faults, pytest.mark.celery]

SYMBOLS = ("XAUUSD", "EURUSD", "BTCUSD")
#: a publish is retried at most this long across a failover (node timeout 2 s + election + slot map refresh)
RETRY_BOUND_S = 30.0
FAST = LogRouteConfig(batch=10, claim_after=2.0, time_budget=10.0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterSet]:
    topology = ClusterSet(replicas=1).start()
    yield topology
    topology.close()


@pytest.fixture(params=["redis", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def celery_broker(request: pytest.FixtureRequest, broker_url: str) -> str:
    """The Celery broker beside the cluster: a database of the shared Redis, or RabbitMQ in a vhost of the
    test's own. With RabbitMQ the log routes' wake-ups go out after the publish script (not in its MULTI)
    and beat's wake job is the safety net; the promises must hold either way."""
    return broker_url if request.param == "redis" else amqp_url(request.getfixturevalue("vhost"))


def publish_retrying(
    bus: RedisEventBus, event: TradeEvent, unsure: set[str], errors: Counter[str]
) -> tuple[str, float]:
    """Publish, retrying what failed until RETRY_BOUND_S; (log id, seconds it took). An event whose publish
    failed may still be logged (the reply was lost, or NotReplicatedError): it goes to ``unsure``."""
    started = time.monotonic()
    while True:
        try:
            return bus.publish(event).log_id, time.monotonic() - started
        except (BusError, redis.RedisError) as e:
            errors[type(e).__name__] += 1
            unsure.add(event.event_id)
            if time.monotonic() - started > RETRY_BOUND_S:
                raise
            time.sleep(0.05)  # a retry's backoff, not a synchronisation


def log_of(bus: RedisEventBus, symbol: str) -> list[str] | None:
    """The event ids of ``symbol``'s log, or None while the client is still finding the new master."""
    try:
        return [e.event_id for _, e in bus.read_log(symbol)]
    except redis.RedisError:
        return None


def drain_all(bus: RedisEventBus) -> None:
    """The state route's drain on every symbol, retried while the Cluster moves the slot (SlotMovedError)."""
    state = RoutingTable.default().get("state")
    for symbol in SYMBOLS:

        def drained(symbol: str = symbol) -> bool:
            try:
                return Drainer(bus.client, bus.keys, state, symbol, effect_for(state), config=FAST).run().status == DONE
            except redis.RedisError:
                return False

        wait_for(drained, RETRY_BOUND_S, f"state drained on {symbol}")


def test_failover_and_a_killed_master_lose_no_confirmed_event(cluster: ClusterSet, key_prefix: str,
                                                              celery_broker: str) -> None:  # fmt: skip
    s = Settings(redis_url=cluster.url, celery_broker_url=celery_broker, key_prefix=key_prefix,
                 broker_key_prefix=f"{key_prefix}:", publish_replicas=1, publish_replicas_timeout_ms=2000)  # fmt: skip
    bus = RedisEventBus(settings=s, dispatcher=Dispatcher.from_settings(s, log_routes=FAST))
    sub = RedisEventBus(settings=s.model_copy(update={"dispatch": False}))
    seen: dict[str, list[str]] = {sym: [] for sym in SYMBOLS}
    for sym in SYMBOLS:
        sub.subscribe_all(sym, lambda e: seen[e.symbol].append(e.event_id))
    handle = sub.listen_in_thread()
    assert handle.wait_ready(10)
    confirmed: dict[str, list[str]] = {sym: [] for sym in SYMBOLS}
    unsure: set[str] = set()
    errors: Counter[str] = Counter()
    slowest = 0.0
    n = 0

    def burst(count: int) -> None:
        nonlocal n, slowest
        for _ in range(count):
            for sym in SYMBOLS:
                e = TradeEvent.create_order_created(sym, f"o{n}", "BUY", 100.0, 1.0)
                _, took = publish_retrying(bus, e, unsure, errors)
                confirmed[sym].append(e.event_id)
                slowest = max(slowest, took)
                n += 1

    burst(20)
    drain_all(bus)
    # a planned failover of XAUUSD's master, then a crash of EURUSD's (whichever node serves it now)
    old = cluster.master_of(bus.keys.log("XAUUSD"))
    new = cluster.failover(old)
    assert cluster.master_of(bus.keys.log("XAUUSD")) == new != old
    burst(20)
    drain_all(bus)
    crashed = cluster.master_of(bus.keys.log("EURUSD"))
    cluster.kill(crashed)

    def recover() -> None:  # what an operator does: the crashed node comes back, as the new master's replica
        cluster.wait_for_new_master(crashed)
        cluster.server(crashed).start()

    operator = threading.Thread(target=recover)
    operator.start()
    # publishes to EURUSD fail (BusConnectionError) until its replica is promoted, then are not confirmed
    # (NotReplicatedError: the new master has no replica) until the old node rejoins; the caller retries them
    burst(20)
    operator.join()
    assert cluster.master_of(bus.keys.log("EURUSD")) != crashed
    assert errors["BusConnectionError"] + errors["NotReplicatedError"] > 0, errors
    drain_all(bus)

    assert slowest < RETRY_BOUND_S
    for sym in SYMBOLS:
        logged = wait_for(lambda sym=sym: log_of(bus, sym), RETRY_BOUND_S, f"{sym} log")
        # every confirmed event is in the log, in publish order; a second copy only of a publish that failed
        assert [i for i in dict.fromkeys(logged)] == confirmed[sym]
        assert all(i in unsure for i in logged if logged.count(i) > 1)
        # the subscriber healed its gaps from the log: each log entry once, in log order
        wait_for(lambda sym=sym, logged=logged: seen[sym] == logged, 30, f"{sym} delivered\n{seen[sym][-5:]}")
        # the state drains resumed on the new masters: the last order is projected
        assert get_order(bus.client, bus.keys, sym, f"o{n - len(SYMBOLS) + SYMBOLS.index(sym)}") is not None
    sub.close()
    bus.close()


RECORD = {"name": "rec", "task": "tradebus_test.log_record_slot", "queue": "tradebus.state",
          "event_types": ["order.*"], "mode": "log"}  # fmt: skip
STATE = {"name": "state", "task": "tradebus.state.apply", "queue": "tradebus.state", "event_types": ["order.*"],
         "mode": "log"}  # fmt: skip


def test_workers_drains_resume_across_a_failover_and_a_killed_master_each_entry_once(
    cluster: ClusterSet, key_prefix: str, celery_broker: str, tmp_path: Path
) -> None:
    """Real workers (prefork, with beat) drain a recorder route and the state projection while the masters
    change: every log entry is applied once, in log order, on whichever master serves the symbol now."""
    s = Settings(redis_url=cluster.url, celery_broker_url=celery_broker, key_prefix=key_prefix,
                 broker_key_prefix=f"{key_prefix}:", publish_replicas=1, publish_replicas_timeout_ms=2000)  # fmt: skip
    routes = routes_file(tmp_path / "routes.json", [RECORD, STATE])
    unsure: set[str] = set()
    errors: Counter[str] = Counter()
    with log_worker(s, "a", routes, beat=True) as a, log_worker(s, "b", routes) as b, publisher(s, routes) as bus:
        sent = 0

        def burst(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                for sym in SYMBOLS:
                    publish_retrying(bus, TradeEvent.create_order_created(sym, f"w{sent}", "BUY", 1.0, 1.0),
                                     unsure, errors)  # fmt: skip
                    sent += 1

        burst(15)
        cluster.failover(cluster.master_of(bus.keys.log("BTCUSD")))
        burst(15)
        crashed = cluster.master_of(bus.keys.log("XAUUSD"))
        cluster.kill(crashed)
        operator = threading.Thread(target=lambda: (cluster.wait_for_new_master(crashed),
                                                    cluster.server(crashed).start()))  # fmt: skip
        operator.start()
        burst(15)
        operator.join()
        for sym in SYMBOLS:
            logged = wait_for(lambda sym=sym: log_of(bus, sym), RETRY_BOUND_S, f"{sym} log")
            wait_for(lambda sym=sym, logged=logged: applied(bus.client, bus.keys, "rec", sym) == logged, 90,
                     f"{sym} applied once each, in log order\n{tail(a)}\n{tail(b)}")  # fmt: skip
            last = f"w{sent - len(SYMBOLS) + SYMBOLS.index(sym)}"
            wait_for(lambda sym=sym, last=last: get_order(bus.client, bus.keys, sym, last), 60, f"{sym} state")


def test_which_confirmed_events_a_crash_loses_with_and_without_wait() -> None:
    """The replica of XAUUSD's master is cut off (stopped, its link killed), then the master is SIGKILLed and
    the replica promoted. Without WAIT a publish confirmed meanwhile is lost; with WAIT 1 the same publish is
    never confirmed (NotReplicatedError), and every event it confirmed survives (replicated publish)."""
    topology = ClusterSet(replicas=1).start()
    try:
        base = Settings(redis_url=topology.url, dispatch=False, key_prefix="tbtest-wait")
        plain = RedisEventBus(settings=base)
        durable = RedisEventBus(settings=base.model_copy(update={"publish_replicas": 1,
                                                                  "publish_replicas_timeout_ms": 500}))  # fmt: skip
        kept = durable.publish(TradeEvent.create_order_created("XAUUSD", "kept", "BUY", 1.0, 1.0))
        master = topology.master_of(durable.keys.log("XAUUSD"))
        replica = topology.replica_of(master)
        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)
        admin = topology.server(master).client()
        admin.client_kill_filter(_type="replica")  # its link is cut: nothing written from now on reaches it
        admin.close()
        try:
            unconfirmed = TradeEvent.create_order_created("XAUUSD", "waited", "BUY", 1.0, 1.0)
            with pytest.raises(NotReplicatedError):
                durable.publish(unconfirmed)  # logged on the master only: not confirmed
            lost = plain.publish(TradeEvent.create_order_created("XAUUSD", "lost", "BUY", 1.0, 1.0))
            topology.kill(master)
        finally:
            replica.process.send_signal(signal.SIGCONT)
        topology.wait_for_new_master(master, replica.port)

        logged = wait_for(lambda: log_of(plain, "XAUUSD"), RETRY_BOUND_S, "the log on the promoted master")
        assert kept.event_id in logged  # confirmed with WAIT 1: survived
        assert lost.event_id not in logged  # confirmed without WAIT: lost with the master
        assert unconfirmed.event_id not in logged  # never confirmed
        plain.close()
        durable.close()
    finally:
        topology.close()


def test_a_subscriber_whose_node_is_killed_reconnects_to_another_and_heals(key_prefix: str) -> None:
    """Each new pub/sub connection goes to the next node of the slot map: killing the node a subscriber
    listens on, it reconnects to a live one and reads what it missed from the log (self-healing subscribers)."""
    topology = ClusterSet(replicas=1).start()
    buses: list[RedisEventBus] = []
    try:
        s = Settings(redis_url=topology.url, dispatch=False, key_prefix=key_prefix)
        pub, sub = RedisEventBus(settings=s), RedisEventBus(settings=s)
        buses += [sub, pub]
        seen: list[str] = []
        sub.subscribe_all("XAUUSD", lambda e: seen.append(e.event_id))
        handle = sub.listen_in_thread()
        assert handle.wait_ready(10)
        listened = sub.client.get_default_node()  # type: ignore[attr-defined]
        assert listened is not None
        events = [TradeEvent.create_order_created("XAUUSD", f"o{i}", "BUY", 1.0, 1.0) for i in range(10)]
        for e in events[:5]:
            pub.publish(e)
        wait_for(lambda: len(seen) == 5, 10, "the first five delivered")
        topology.kill(listened.port)  # the subscriber's node; if it served XAUUSD, its replica takes over
        unsure: set[str] = set()
        for e in events[5:]:
            publish_retrying(pub, e, unsure, Counter())
        logged = wait_for(lambda: log_of(pub, "XAUUSD"), RETRY_BOUND_S, "the log after the kill")
        wait_for(lambda: seen == logged, RETRY_BOUND_S, f"every log entry delivered once, in order: {seen}")
        assert [i for i in dict.fromkeys(logged)] == [e.event_id for e in events]
    finally:
        for bus in buses:  # no listener outlives the test, passed or failed
            bus.close()
        topology.close()
