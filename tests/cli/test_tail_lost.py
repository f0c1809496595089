"""`tradebus tail` tells what the log lost before it could read it (events trimmed, TRADEBUS_LOG_MAXLEN)."""

from __future__ import annotations

import json

import redis

from bus.core.bus import RedisEventBus
from tests.cli.test_cli import start_tail
from tests.core.test_bus_subscribe import lose_broadcast, order


def test_tail_shows_events_lost_to_trimming(env: dict[str, str], symbol: str, redis_url: str, key_prefix: str) -> None:
    proc = start_tail(env, "--symbol", symbol, "--count", "3")
    with RedisEventBus(redis_url, key_prefix=key_prefix) as bus:
        first = bus.publish(order(1, symbol))
        # Given two events logged whose broadcasts were lost, of which the log keeps the second
        lose_broadcast(bus, order(2, symbol))
        lose_broadcast(bus, order(3, symbol))
        kept = bus.read_log(symbol)[-1][0]
        with redis.Redis.from_url(redis_url) as client:
            client.xtrim(bus.keys.log(symbol), maxlen=1, approximate=False)
        bus.publish(order(4, symbol))
    # Then tail shows what is left, and says on stderr how many were lost and where
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    assert [json.loads(line)["data"]["order_id"] for line in out.splitlines()] == ["1", "3", "4"]
    assert "LOST 1 event(s) of " + symbol in " ".join(err.split())
    assert first.log_id in err and kept in err
