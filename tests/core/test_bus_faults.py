"""Self-healing subscribers under faults, on servers the tests own: subscriber connections killed,
Redis restarted (AOF); for the blocking and the asyncio bus (make_bus)."""

from __future__ import annotations

import threading

import pytest
import redis

from bus import TradeEvent
from bus.embedded import EmbeddedRedis
from tests.helpers import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.faults, pytest.mark.slow]

SYMBOLS = ("KILLA", "KILLB")


def event(i: int, symbol: str) -> TradeEvent:
    return TradeEvent.create_trade_executed(symbol=symbol, trade_id=f"t{i}", side="BUY", price=100.0 + i % 7,
                                            volume=1.0, seq=i)  # fmt: skip


def test_ten_thousand_events_survive_two_pubsub_kills(make_bus, key_prefix):
    with EmbeddedRedis() as server:
        sub = make_bus(server.url, key_prefix=key_prefix)
        pub = make_bus(server.url, key_prefix=key_prefix)
        admin = redis.Redis.from_url(server.url)
        got: dict[str, list[int]] = {s: [] for s in SYMBOLS}
        exact: list[int] = []
        for s in SYMBOLS:
            sub.subscribe_all(s, lambda e, s=s: got[s].append(e.data["seq"]))
        sub.subscribe(SYMBOLS[0], "trade.executed", lambda e: exact.append(e.data["seq"]))
        handle = sub.listen_in_thread()
        assert handle.wait_ready(10)

        # When 10,000 events are published on two symbols while the subscriber is killed twice
        total = 10_000
        sent = [0]

        def publish_all():
            for start in range(0, total, 50):
                batch = [event(i, SYMBOLS[i % 2]) for i in range(start, start + 50)]
                if start % 100:
                    pub.publish_many(batch)
                else:
                    for e in batch:
                        pub.publish(e)
                sent[0] = start + 50

        publisher = threading.Thread(target=publish_all, daemon=True)
        publisher.start()
        killed = []
        for threshold in (2_500, 6_000):
            wait_for(lambda threshold=threshold: sent[0] >= threshold, 60, "publisher progress")
            wait_for(lambda: handle.wait_ready(0), 30, "subscriber reconnected")
            killed.append(admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))
        publisher.join(120)
        assert not publisher.is_alive()

        # Then every event reaches each handler exactly once, in order per symbol
        want = {s: [i for i in range(total) if SYMBOLS[i % 2] == s] for s in SYMBOLS}
        wait_for(lambda: all(len(got[s]) >= len(want[s]) for s in SYMBOLS) and len(exact) >= len(want[SYMBOLS[0]]),
                 60, "all events delivered")  # fmt: skip
        assert killed == [1, 1]
        assert got == want
        assert exact == want[SYMBOLS[0]]
        c = sub.counters
        assert c.reconnects >= 2 and c.recovered_from_log > 0 and c.gaps_lost == 0, c
        handle.stop()
        handle.join(5)
        for b in (sub, pub):
            b.close()
        admin.close()


def test_listener_survives_a_redis_restart_with_aof(make_bus, own_redis, key_prefix):
    n, restart_at = 300, 120
    sub = make_bus(own_redis.url, key_prefix=key_prefix)
    seen: list[str] = []
    gate = threading.Event()

    def handler(e: TradeEvent) -> None:
        seen.append(e.event_id)
        if e.data["seq"] == restart_at - 1:
            gate.wait(60)  # hold the listener while Redis restarts and more events are published

    sub.subscribe_all("RESTART", handler)
    handle = sub.listen_in_thread()
    assert handle.wait_ready(10)
    pub = make_bus(own_redis.url, key_prefix=key_prefix)
    acknowledged: list[str] = []

    def publish(i: int) -> None:
        e = event(i, "RESTART")
        while True:  # a publisher retries until Redis acknowledges the event (durable publish: errors, never drops)
            try:
                pub.publish(e)
                acknowledged.append(e.event_id)
                return
            except redis.ConnectionError:
                wait_for(lambda: pub.is_connected, 30, "redis back")

    for i in range(n):
        if i == restart_at:
            wait_for(lambda: len(seen) == restart_at, 30, "listener holding")
            own_redis.restart()  # SIGTERM (AOF flushed), then start on the same port and directory
        publish(i)
    gate.set()

    # The subscriber delivers exactly what the log holds, in log order, once each
    logged = [e.event_id for _, e in pub.read_log("RESTART")]
    assert [x for x in acknowledged if x in set(logged)] == acknowledged  # nothing acknowledged was lost
    wait_for(lambda: len(seen) >= len(logged), 60, "catch-up after restart")
    assert seen == logged and len(logged) >= n
    # everything published after the restart reached the listener through the log
    assert sub.counters.reconnects >= 1 and sub.counters.recovered_from_log == len(logged) - restart_at
    handle.stop()
    handle.join(5)
    pub.close()
    sub.close()
