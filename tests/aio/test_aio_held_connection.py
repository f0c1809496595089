"""The asyncio bus's held connection (bus/aio/connection.py AsyncHeldConnection), attacked as the blocking
one is (tests/core/test_held_connection.py): a connection the server dropped, a Redis restart, a flushed
script cache, many tasks publishing at once, a publish cancelled while awaiting its reply, and aclose()."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio

from bus import BusConnectionError, TradeEvent
from bus.aio import AsyncRedisEventBus
from bus.embedded import EmbeddedRedis
from tests.aio.test_aio import run


def orders(n: int, symbol: str = "AHELD") -> list[TradeEvent]:
    return [TradeEvent.create_order_created(symbol, f"{symbol}-{i}", "BUY", 100.0 + i, 1.0) for i in range(n)]


def ids(events: list[TradeEvent]) -> list[str]:
    return [e.event_id for e in events]


async def logged(bus: AsyncRedisEventBus, symbol: str = "AHELD") -> list[str]:
    return [e.event_id for _, e in await bus.read_log(symbol)]


async def held_id(bus: AsyncRedisEventBus) -> int:
    """The server's client id of the held connection (taken by the first publish of a known symbol)."""
    conn = bus._held._conn
    assert conn is not None, "no held connection: single publishes went through the pool"
    await conn.send_command("CLIENT", "ID")
    return int(await conn.read_response())


def test_a_connection_the_server_killed_is_replaced_and_the_publish_logged_once(
    redis_url: str, key_prefix: str, redis_client: redis.Redis
) -> None:
    async def main() -> None:
        events = orders(3)
        async with AsyncRedisEventBus(redis_url, key_prefix=key_prefix) as bus:
            await bus.publish(events[0])
            await bus.publish(events[1])
            killed = await held_id(bus)
            assert redis_client.client_kill_filter(_id=killed) == 1
            await bus.publish(events[2])
            assert await held_id(bus) != killed
            assert await logged(bus) == ids(events)

    run(main())


def test_publish_across_a_redis_restart(key_prefix: str) -> None:
    async def main(server: EmbeddedRedis) -> None:
        events = orders(4)
        async with AsyncRedisEventBus(server.url, key_prefix=key_prefix) as bus:
            await bus.publish(events[0])
            await bus.publish(events[1])
            server.kill()
            with pytest.raises(BusConnectionError):
                await bus.publish(events[2])
            server.restart()
            await bus.publish(events[3])
            assert await logged(bus) == ids([events[0], events[1], events[3]])

    with EmbeddedRedis(appendonly=True) as server:
        run(main(server))


def test_a_flushed_script_cache_is_reloaded(redis_url: str, key_prefix: str, redis_client: redis.Redis) -> None:
    async def main() -> None:
        events = orders(3)
        async with AsyncRedisEventBus(redis_url, key_prefix=key_prefix) as bus:
            await bus.publish(events[0])
            await bus.publish(events[1])
            redis_client.script_flush()
            await bus.publish(events[2])  # NOSCRIPT on the held connection: EVAL, once
            assert await logged(bus) == ids(events)

    run(main())


def test_tasks_publishing_at_once_each_event_logged_once_in_each_tasks_order(redis_url: str, key_prefix: str) -> None:
    async def main() -> None:
        per_task, tasks = 100, 8
        events = orders(per_task * tasks)
        async with AsyncRedisEventBus(redis_url, key_prefix=key_prefix) as bus:
            await bus.publish(events[0])

            async def publish(t: int) -> None:
                for e in events[t * per_task : (t + 1) * per_task]:
                    if e is not events[0]:
                        await bus.publish(e)

            await asyncio.gather(*(publish(t) for t in range(tasks)))  # the busy held connection: the pool
            seen = await logged(bus)
            assert len(seen) == len(set(seen)) == len(events)
            for t in range(tasks):
                mine = ids(events[t * per_task : (t + 1) * per_task])
                assert [x for x in seen if x in set(mine)] == mine

    run(main())


def test_a_publish_cancelled_awaiting_its_reply_leaves_no_reply_for_the_next(key_prefix: str) -> None:
    """Cancelled after its script was sent, the publish's reply is never read: the held connection is
    dropped, so the next publish gets its own log id, not the cancelled one's. The server holds the script
    (CLIENT PAUSE WRITE, on a server of the test's own) until the publish is seen waiting for its reply."""

    async def main(server: EmbeddedRedis) -> None:
        events = orders(4)
        admin = server.client()
        async with AsyncRedisEventBus(server.url, key_prefix=key_prefix) as bus:
            await bus.publish(events[0])
            await bus.publish(events[1])
            held = await held_id(bus)
            admin.client_pause(10_000, all=False)  # WRITE: the publish script waits, reads still answer
            task = asyncio.create_task(bus.publish(events[2]))
            deadline = asyncio.get_running_loop().time() + 10
            while not any(c["id"] == str(held) and c["cmd"] == "evalsha" for c in admin.client_list()):
                assert asyncio.get_running_loop().time() < deadline, "the publish never reached the server"
                await asyncio.sleep(0.01)  # polling the server with a deadline
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            admin.client_unpause()  # the cancelled script runs now; its reply goes to a closed connection
            receipt = await bus.publish(events[3])
            entries = dict(await bus.read_log("AHELD"))
            assert entries[receipt.log_id].event_id == events[3].event_id  # its own entry, not the cancelled one
            assert await held_id(bus) != held  # the connection that had a reply in flight was dropped
        admin.close()

    with EmbeddedRedis() as server:
        run(main(server))


def test_aclose_gives_the_connection_back_to_a_callers_client(redis_url: str, key_prefix: str) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        events = orders(2)
        bus = AsyncRedisEventBus(client=client, key_prefix=key_prefix)
        await bus.publish(events[0])
        await bus.publish(events[1])
        assert len(client.connection_pool._in_use_connections) == 1
        await bus.aclose()
        assert len(client.connection_pool._in_use_connections) == 0
        assert await client.ping()
        await client.aclose()

    run(main())
