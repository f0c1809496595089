"""The publisher's held connection (bus/core/connection.py HeldConnection): single publishes skip the pool's
per-command hand-over, and must lose nothing for it: a connection the server dropped, a Redis restart, a
flushed script cache, threads publishing at once, a forked child, and close() giving the connection back."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import redis

from bus import RedisEventBus, TradeEvent
from bus.embedded import EmbeddedRedis
from bus.errors import BusConnectionError


def orders(n: int, symbol: str = "HELD") -> list[TradeEvent]:
    return [TradeEvent.create_order_created(symbol, f"{symbol}-{i}", "BUY", 100.0 + i, 1.0) for i in range(n)]


def logged(bus: RedisEventBus, symbol: str = "HELD") -> list[str]:
    return [e.event_id for _, e in bus.read_log(symbol)]


def ids(events: list[TradeEvent]) -> list[str]:
    return [e.event_id for e in events]


def held_id(bus: RedisEventBus) -> int:
    """The server's client id of the bus's held connection (taken by the first publish of a symbol already
    known: a symbol's first publish also adds it to the symbol set, in a pipeline of the pool's)."""
    conn = bus.publisher.held._conn
    assert conn is not None, "no held connection: single publishes went through the pool"
    conn.send_command("CLIENT", "ID")
    return int(conn.read_response())


def test_a_connection_the_server_killed_is_replaced_and_the_publish_logged_once(
    redis_url: str, key_prefix: str, redis_client: redis.Redis
) -> None:
    bus, events = RedisEventBus(redis_url, key_prefix=key_prefix), orders(3)
    bus.publish(events[0])
    bus.publish(events[1])
    killed = held_id(bus)
    assert redis_client.client_kill_filter(_id=killed) == 1  # as a server restart, timeout or operator would
    bus.publish(events[2])
    assert held_id(bus) != killed  # a new connection: the retry re-sent the script on it
    assert logged(bus) == ids(events)
    bus.close()


def test_publish_across_a_redis_restart(key_prefix: str) -> None:
    with EmbeddedRedis(appendonly=True) as server:
        bus, events = RedisEventBus(server.url, key_prefix=key_prefix), orders(4)
        bus.publish(events[0])
        bus.publish(events[1])  # on the held connection
        server.kill()
        with pytest.raises(BusConnectionError):  # retried, then reported: never a hang, never a silent loss
            bus.publish(events[2])
        server.restart()
        bus.publish(events[3])
        assert logged(bus) == ids([events[0], events[1], events[3]])  # AOF kept them; the refused one is absent
        bus.close()


def test_a_flushed_script_cache_is_reloaded(redis_url: str, key_prefix: str, redis_client: redis.Redis) -> None:
    bus, events = RedisEventBus(redis_url, key_prefix=key_prefix), orders(3)
    bus.publish(events[0])
    bus.publish(events[1])
    redis_client.script_flush()
    bus.publish(events[2])  # NOSCRIPT on the held connection: EVAL, once
    assert logged(bus) == ids(events)
    bus.close()


def test_threads_publishing_at_once_each_event_logged_once_in_each_threads_order(
    redis_url: str, key_prefix: str
) -> None:
    bus = RedisEventBus(redis_url, key_prefix=key_prefix)
    per_thread = 300
    events = orders(8 * per_thread)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def publish(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                bus.publish(events[t * per_thread + i])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    seen = logged(bus)
    assert len(seen) == len(set(seen)) == 8 * per_thread
    for t in range(8):
        mine = ids(events[t * per_thread : (t + 1) * per_thread])
        assert [x for x in seen if x in set(mine)] == mine  # one thread's publishes keep their order
    bus.close()


def test_a_forked_child_publishes_on_a_connection_of_its_own(redis_url: str, key_prefix: str) -> None:
    bus, events = RedisEventBus(redis_url, key_prefix=key_prefix), orders(4)
    bus.publish(events[0])
    bus.publish(events[1])
    parent_conn = bus.publisher.held._conn
    assert parent_conn is not None
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe()

    def child() -> None:  # inherits this bus with its held connection, as a prefork worker's children do
        bus.publish(events[2])
        theirs.send(bus.publisher.held._conn is parent_conn)

    process = ctx.Process(target=child)
    process.start()
    process.join(30)
    assert process.exitcode == 0 and mine.recv() is False  # the child took a connection of its own
    bus.publish(events[3])  # the parent's socket was never used by the child: its replies are its own
    assert logged(bus) == ids(events)
    bus.close()


def test_close_gives_the_connection_back_to_a_callers_client(redis_url: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    bus, events = RedisEventBus(client=client, key_prefix=key_prefix), orders(2)
    bus.publish(events[0])
    bus.publish(events[1])
    assert len(client.connection_pool._in_use_connections) == 1
    bus.close()
    assert len(client.connection_pool._in_use_connections) == 0
    assert client.ping()  # the caller's client still works
    client.close()
