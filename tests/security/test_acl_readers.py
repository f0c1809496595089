"""The ACL rule that keeps PUBLISH on trades:* to the bus's own user (safe by default, self-healing
subscribers): a reader's user subscribes and reads the log, and cannot broadcast a forged event."""

from __future__ import annotations

import orjson
import pytest
import redis

from bus.config import LoadEnvironmentVariables
from bus.core.bus import RedisEventBus
from bus.events.model import TradeEvent
from tests.helpers import wait_for
from tests.security.test_security import _prefix, _setuser

#: the rules README's security section gives a subscriber-only user (channels cover PUBLISH and
#: SUBSCRIBE alike in Redis 7 ACLs, so the command rules are what keep it from publishing)
READER_RULES = ("-@all", "+@read", "+@connection", "+@pubsub", "-publish", "-spublish", "+time")


def test_a_reader_user_subscribes_and_reads_the_log_but_cannot_publish(acl_server) -> None:
    admin, port, p = acl_server.admin(), acl_server.port, _prefix()
    _setuser(admin, "bus", "bus-pw", f"~{p}:*", "&trades:*")  # the bus's own user: publishes
    admin.execute_command(
        "ACL", "SETUSER", "reader", "reset", "resetchannels", "on", ">reader-pw", f"%R~{p}:*", "&trades:*",
        *READER_RULES,
    )  # fmt: skip
    url = f"redis://{{}}@127.0.0.1:{port}/0"
    bus_settings = LoadEnvironmentVariables(None, redis_url=url.format("bus:bus-pw"), key_prefix=p, dispatch=False)
    reader_settings = LoadEnvironmentVariables(
        None, redis_url=url.format("reader:reader-pw"), key_prefix=p, dispatch=False
    )
    with RedisEventBus(settings=bus_settings) as bus, RedisEventBus(settings=reader_settings) as reader:
        got: list[TradeEvent] = []
        reader.subscribe("XAUUSD", "order.created", got.append)
        handle = reader.listen_in_thread()
        assert handle.wait_ready(5), (str(handle.error), acl_server.acl_log())
        first = TradeEvent.create_order_created("XAUUSD", "r-1", "BUY", 1.0, 1.0)
        receipt = bus.publish(first)
        wait_for(lambda: got == [first], timeout=10, what="the reader's delivery")
        # the reader reads the log (catch-up) ...
        assert [e for _, e in reader.read_log("XAUUSD")] == [first]
        # ... and cannot broadcast: not with PUBLISH, SPUBLISH, nor from a script, nor write the log
        forged = orjson.dumps({"log_id": "99999999999999-0", "prev": receipt.log_id, "bus": p, **first.to_dict()})
        client = reader.client
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.publish("trades:XAUUSD:order.created", forged)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command("SPUBLISH", "trades:XAUUSD:order.created", forged)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.eval("return redis.call('PUBLISH', KEYS[1], ARGV[1])", 0, "trades:XAUUSD:order.created", forged)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.xadd(bus.keys.log("XAUUSD"), {"type": "order.created", "event": first.encode()})
        assert reader.counters.malformed == reader.counters.forged == 0 and handle.is_alive()
        assert {e["username"] for e in acl_server.acl_log()} == {"reader"}  # only what the test tried
        handle.stop()
        handle.join(5)
