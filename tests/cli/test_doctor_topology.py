"""`tradebus doctor` on a Sentinel set and a Cluster the test starts: roles, replicas and their lag,
which master holds which symbols' slots, and a durability setting the topology cannot meet."""

from __future__ import annotations

import pytest

from bus import RedisEventBus, TradeEvent
from bus.cli.doctor import run_checks
from bus.config import Settings
from bus.core.deployment import deployment
from tests.helpers import wait_for
from tests.topology_servers import ClusterSet, SentinelSet

pytestmark = [pytest.mark.slow]


def order(symbol: str) -> TradeEvent:
    return TradeEvent.create_order_created(symbol=symbol, order_id="o1", order_type="BUY", price=1.0, volume=1.0)


def topology_check(settings: Settings):
    (check,) = [c for c in run_checks(settings, ping_timeout=0.1) if c.name == "topology"]
    return check


def test_doctor_on_sentinel_names_the_master_and_its_replica(key_prefix: str) -> None:
    sentinels = SentinelSet().start()
    try:
        s = Settings(redis_url=sentinels.url, key_prefix=key_prefix)
        with RedisEventBus(settings=s) as bus:
            found = wait_for(lambda: _online(deployment(bus.client, bus.keys)), 10, "the replica online")
        assert found.kind == "sentinel" and found.sentinel_service == sentinels.name
        (master,) = found.masters
        assert master.address == f"127.0.0.1:{sentinels.master_port()}"
        assert [r.address for r in master.replicas] == [f"127.0.0.1:{sentinels.replica().port}"]
        check = topology_check(s)
        assert (
            check.status == "ok" and f"Sentinel service {sentinels.name}" in check.detail and "online" in check.detail
        )
        unmet = topology_check(Settings(redis_url=sentinels.url, key_prefix=key_prefix, publish_replicas=2))
        assert unmet.status == "fail" and "TRADEBUS_PUBLISH_REPLICAS=2" in unmet.fix
    finally:
        sentinels.close()


def test_doctor_on_a_cluster_says_which_master_holds_which_symbols(key_prefix: str, broker_url: str) -> None:
    cluster = ClusterSet().start()
    try:
        # a broker that answers (a Cluster cannot be one): doctor's checks of a refused one sit out
        # redis-py's connection retries (~4 s), which this test of the topology check has no use for
        s = Settings(redis_url=cluster.url, key_prefix=key_prefix, celery_broker_url=broker_url)
        symbols = ("XAUUSD", "EURUSD", "BTCUSD")
        with RedisEventBus(settings=s) as bus:
            for symbol in symbols:
                bus.publish(order(symbol))
            found = deployment(bus.client, bus.keys)
            holder = {sym: bus.client.get_node_from_key(bus.keys.log(sym)).name for sym in symbols}  # type: ignore[attr-defined]
        assert found.kind == "cluster" and len(found.masters) == 3
        assert sum(m.slots or 0 for m in found.masters) == 16384
        assert {sym: m.address for m in found.masters for sym in m.symbols} == holder
        check = topology_check(s)
        assert check.status == "ok" and "Redis Cluster, 3 masters" in check.detail
    finally:
        cluster.close()


def _online(found):
    return found if found.masters[0].online_replicas else None
