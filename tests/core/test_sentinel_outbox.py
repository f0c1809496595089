"""Replicated publish for an executor's outbox (sequenced publish) across a Sentinel failover: with
TRADEBUS_PUBLISH_REPLICAS an outbox deletes an event only once a replica has it, so the master's crash
loses none of them; a resend found already logged waits for the replica too (a restarted executor's
resend included); once a replica is back, the outbox delivers what the failover lost, once each, in order."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from bus import RedisEventBus, TradeEvent
from bus.config import Settings
from bus.executor.outbox import Outbox, OutboxPublisher
from tests.helpers import wait_for
from tests.topology_servers import SentinelSet

pytestmark = [pytest.mark.faults, pytest.mark.slow]

#: an outbox retries on flush() only, never on its own timer, so the test decides when it resends
NEVER = 3600.0


def order(i: int) -> TradeEvent:
    return TradeEvent.create_order_created("OUTBOX", f"o{i}", "BUY", 2000.0 + i, 0.1, source="ex")


def bus_on(topology: SentinelSet, key_prefix: str, replicas: int) -> RedisEventBus:
    s = Settings(redis_url=topology.url, dispatch=False, redis_connect_timeout=1.0, redis_socket_timeout=1.0,
                 publish_replicas=replicas, publish_replicas_timeout_ms=100)  # fmt: skip
    return RedisEventBus(settings=s, key_prefix=key_prefix)


def logged(bus: RedisEventBus) -> list[str] | None:
    try:
        return [e.event_id for _, e in bus.read_log("OUTBOX")]
    except redis.ConnectionError:  # the master is changing
        return None


@pytest.mark.parametrize("replicas", [0, 1])
def test_an_outbox_keeps_what_no_replica_confirmed_across_a_master_crash(
    sentinels: SentinelSet, key_prefix: str, tmp_path: Path, replicas: int
) -> None:
    # Given an outbox whose first events every node has
    path = tmp_path / "outbox.db"
    bus = bus_on(sentinels, key_prefix, replicas)
    outbox = OutboxPublisher(bus, Outbox(path), source="ex", retry_interval=NEVER)
    before, during = [order(i) for i in range(5)], [order(i) for i in range(5, 10)]
    for e in before:
        assert outbox.publish(e) is not None
    assert bus.client.execute_command("WAIT", 1, 5000) == 1
    # When the replica is cut off (stopped, its link killed: nothing written from now on reaches it)
    replica = sentinels.replica()
    sentinels.pause(replica)
    sentinels.master().client().client_kill_filter(_type="replica")
    for e in during:
        outbox.publish(e)
    outbox.flush()  # every queued event is on the master now, whatever the outbox thinks of them
    assert wait_for(lambda: logged(bus), 5, "the log")[5:] == [e.event_id for e in during]
    assert outbox.pending == (0 if replicas == 0 else 5)  # NotReplicatedError: kept for a resend
    # Then the master crashes and Sentinel promotes the cut-off replica, which never got `during`
    old = sentinels.kill_master()
    sentinels.resume(replica)
    sentinels.wait_for_new_master(old)
    assert wait_for(lambda: logged(bus), 10, "the new master's log") == [e.event_id for e in before]
    # ...and once the old master is back as a replica, the outbox sends what the crash lost, once each
    sentinels.rejoin(old)
    wait_for(lambda: _flushed(outbox), 30, "the outbox flushed to the new master and its replica")
    expected = before if replicas == 0 else before + during  # without replicas the confirmed `during` are lost
    assert logged(bus) == [e.event_id for e in expected]
    outbox.close()
    bus.close()


def test_a_resend_found_logged_is_confirmed_only_once_a_replica_has_it(
    sentinels: SentinelSet, key_prefix: str, tmp_path: Path
) -> None:
    """WAIT waits for the replication offset of the connection's own last write: a restarted executor's
    resend, which logs nothing new, must still be confirmed only by a replica that has the first write."""
    path = tmp_path / "outbox.db"
    bus = bus_on(sentinels, key_prefix, 1)
    outbox = OutboxPublisher(bus, Outbox(path), source="ex", retry_interval=NEVER)
    # Given events logged on the master while its replica stalls (stopped, still connected: it acks nothing)
    replica = sentinels.replica()
    sentinels.pause(replica)
    events = [order(i) for i in range(5)]
    for e in events:
        outbox.publish(e)
    outbox.flush()
    assert outbox.pending == 5 and wait_for(lambda: logged(bus), 5, "the log") == [e.event_id for e in events]
    # When a restarted executor resends them on new connections
    outbox.close()
    bus.close()
    bus = bus_on(sentinels, key_prefix, 1)
    outbox = OutboxPublisher(bus, Outbox(path), source="ex", retry_interval=NEVER)
    # Then they stay in the outbox while the replica stalls, and leave it once the replica has them
    assert outbox.flush() == 0 and outbox.pending == 5
    sentinels.resume(replica)
    wait_for(lambda: _flushed(outbox), 10, "the outbox flushed once the replica acknowledged")
    assert outbox.already_logged == 5 and logged(bus) == [e.event_id for e in events]
    outbox.close()
    bus.close()


def _flushed(outbox: OutboxPublisher) -> bool:
    outbox.flush()
    return outbox.pending == 0
