"""bus.aio in asyncio code: event streams, handlers, cancellation, backpressure, state queries, the factory.

(Publish, subscribe, gap healing, faults and bad input run for the asyncio bus in the bus suites
through make_bus; these are what only asyncio code can see.) Each test is one ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import pytest
import redis
import redis.asyncio

from bus import BusConnectionError, BusPermissionError, TradeEvent
from bus.aio import AsyncEventBusFactory, AsyncRedisEventBus
from bus.embedded import EmbeddedRedis, free_port
from bus.testing import StubDispatcher

pytestmark = pytest.mark.redis


def order(i: int, symbol: str, **extra: Any) -> TradeEvent:
    return TradeEvent.create_order_created(symbol=symbol, order_id=str(i), order_type="BUY", price=2000.5,
                                           volume=0.1, **extra)  # fmt: skip


def signal(i: int, symbol: str) -> TradeEvent:
    return TradeEvent.create_signal_generated(symbol=symbol, signal_id=f"s{i}", direction="LONG", strategy="m")


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):  # a hang fails the test instead of the suite's timeout
            return await coro

    return asyncio.run(bounded())


def pubsub_clients(server: EmbeddedRedis) -> int:
    admin = server.client()
    try:
        return len(admin.client_list(_type="pubsub"))
    finally:
        admin.close()


async def take(stream: Any, n: int) -> list[TradeEvent]:
    out: list[TradeEvent] = []
    async for event in stream:
        out.append(event)
        if len(out) == n:
            break
    return out


def test_streams_by_symbol_and_types_deliver_in_order(redis_url, key_prefix):
    async def main() -> None:
        async with AsyncRedisEventBus(redis_url, key_prefix=key_prefix) as bus:
            events = [order(0, "AIOA"), signal(1, "AIOA"), order(2, "AIOB"), signal(3, "AIOB"), order(4, "AIOA")]
            async with (
                bus.events(symbol="AIOA", types="order.created") as orders_a,
                bus.events(symbol="AIOA") as all_a,
                bus.events(types=["signal.generated"]) as signals,
            ):
                await bus.publish(events[0])
                await bus.publish_many(events[1:])
                assert await take(orders_a, 2) == [events[0], events[4]]
                assert await take(all_a, 3) == [events[0], events[1], events[4]]
                # other tests' signals may pass on the shared server: this bus's are the ones with its prefix
                assert await take(signals, 2) == [events[1], events[3]]
                assert all_a.counters.delivered == 3 and all_a.counters.malformed == 0

    run(main())


def test_bad_stream_arguments_are_refused(redis_url, key_prefix):
    async def main() -> None:
        async with AsyncRedisEventBus(redis_url, key_prefix=key_prefix) as bus:
            with pytest.raises(ValueError):
                bus.events(symbol="bad symbol!")
            with pytest.raises(ValueError):
                bus.events(types=["no.such.type"])
            with pytest.raises(ValueError, match="at least one"):
                bus.events(types=[])
            with pytest.raises(TypeError, match="callable"):
                bus.subscribe_all("AIOC", "not a handler")  # type: ignore[arg-type]

    run(main())


def test_leaving_a_stream_any_way_releases_its_connection(key_prefix):
    async def main(server: EmbeddedRedis) -> None:
        async with AsyncRedisEventBus(server.url, key_prefix=key_prefix) as bus:
            await bus.publish(order(0, "AIOD"))  # the symbol exists, so catch-up reads its log
            # async with: closed on exit
            async with bus.events(symbol="AIOD") as stream:
                assert pubsub_clients(server) == 1
                await bus.publish(order(1, "AIOD"))
                assert [e.data["order_id"] for e in await take(stream, 1)] == ["1"]
            assert pubsub_clients(server) == 0

            # break out of a bare `async for`: the dropped stream stops its reader
            async def publish_soon() -> None:
                await wait_until(lambda: pubsub_clients(server) == 1)  # subscribed: from now on, delivered
                await bus.publish(order(2, "AIOD"))

            publisher = asyncio.create_task(publish_soon())
            async for event in bus.events(symbol="AIOD", types="order.created"):
                assert event.data["order_id"] == "2"  # a new stream starts now: not from the log's start
                break
            await publisher
            await wait_until(lambda: pubsub_clients(server) == 0)

            # a TaskGroup whose other task fails cancels the consumer: it ends, the connection is released
            consumed: list[str] = []

            async def consume() -> None:
                async with bus.events(symbol="AIOD") as s:
                    async for e in s:
                        consumed.append(e.data["order_id"])

            async def fail_once_consuming() -> None:
                await wait_until(lambda: pubsub_clients(server) == 1)
                await bus.publish(order(3, "AIOD"))
                await wait_until(lambda: consumed == ["3"])
                raise LookupError("the other task failed")

            with pytest.raises(ExceptionGroup) as group:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(consume())
                    tg.create_task(fail_once_consuming())
            assert [type(e) for e in group.value.exceptions] == [LookupError]
            assert pubsub_clients(server) == 0

            # a timeout around the iteration (a cancellation too)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3), bus.events(symbol="AIOD") as s:
                    await take(s, 1)
            assert pubsub_clients(server) == 0

    with EmbeddedRedis() as server:
        run(main(server))


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.mark.slow
def test_a_slow_consumer_holds_bounded_memory_and_heals_when_redis_drops_it(key_prefix):
    # Given a server that drops a pub/sub client with more than 64 kB waiting (production: 32 MB)
    limit = ("--client-output-buffer-limit", "pubsub", "64kb", "32kb", "1")
    total, buffer = 3000, 50

    async def main(server: EmbeddedRedis) -> None:
        bus = AsyncRedisEventBus(server.url, key_prefix=key_prefix, buffer=buffer)
        async with bus, bus.events(symbol="AIOE") as stream:
            sent = [order(i, "AIOE", note="x" * 4000) for i in range(total)]  # ~13 MB in all
            # When the consumer takes one event and then stalls while ~13 MB is published (more than the sockets hold)
            await bus.publish(sent[0])
            got = await take(stream, 1)
            for i in range(1, total, 100):
                await bus.publish_many(sent[i : i + 100])
            await wait_until(lambda: stream.buffered == buffer)
            # Then the reader stopped at the bound (Redis buffered, then dropped the client)...
            assert stream.buffered == buffer
            # ...and once the consumer resumes, every event arrives once, in order, the gap from the log
            got += await take(stream, total - 1)
            assert [e.event_id for e in got] == [e.event_id for e in sent]
            c = stream.counters
            assert c.reconnects >= 1 and c.recovered_from_log > 0 and c.gaps_lost == 0, c

    with EmbeddedRedis(extra_args=limit) as server:
        run(main(server), timeout=120)


def test_handlers_sync_and_async_stop_and_one_loop_per_bus(redis_url, key_prefix):
    async def main() -> None:
        async with AsyncRedisEventBus(redis_url, key_prefix=key_prefix) as bus:
            seen: list[str] = []

            async def slow_async(event: TradeEvent) -> None:
                await asyncio.sleep(0.001)
                seen.append("async:" + event.data["order_id"])

            def failing(event: TradeEvent) -> None:
                raise RuntimeError("boom")

            def stop_at_two(event: TradeEvent) -> None:
                seen.append("sync:" + event.data["order_id"])
                if event.data["order_id"] == "2":
                    bus.stop()

            for handler in (slow_async, failing, stop_at_two):  # one subscription: called in this order
                bus.subscribe_all("AIOF", handler)
            listener = asyncio.create_task(bus.listen())
            assert await bus.wait_until_listening(10)
            with pytest.raises(RuntimeError, match="already listening"):
                await bus.listen()
            await bus.publish_many([order(1, "AIOF"), order(2, "AIOF")])
            await asyncio.wait_for(listener, 10)  # stop() from a handler ends listen()
            assert seen == ["async:1", "sync:1", "async:2", "sync:2"]
            assert bus.counters.handler_errors == 2 and bus.counters.delivered == 4
            # the subscriptions keep their place: the next listen() catches up from the log
            await bus.publish(order(3, "AIOF"))
            listener = asyncio.create_task(bus.listen())
            await wait_until(lambda: seen[-1:] == ["sync:3"])
            listener.cancel()
            with pytest.raises(asyncio.CancelledError):
                await listener

    run(main())


def test_state_queries_connection_checks_and_errors(key_prefix):
    async def main(server: EmbeddedRedis) -> None:
        bus = AsyncRedisEventBus(server.url, key_prefix=key_prefix, apply_state=True)
        async with bus:
            await bus.publish(order(7, "AIOG"))
            opened = TradeEvent.create_position_opened("AIOG", "p1", entry_price=2000.5, volume=0.1, direction="LONG")
            await bus.publish_many([opened, order(8, "AIOG")])
            assert (await bus.get_order("AIOG", "7"))["status"] == "pending"
            assert (await bus.get_position("AIOG", "p1"))["entry_price"] == "2000.5"
            assert [o["order_id"] for o in await bus.get_open_orders("AIOG")] == ["7", "8"]
            assert [p["position_id"] for p in await bus.get_active_positions("AIOG")] == ["p1"]
            assert await bus.get_order("AIOG", "nope") is None and await bus.get_open_orders("NONE") == []
            assert [e for _, e in await bus.read_log("AIOG")][1] == opened
            assert await bus.known_symbols() == ["AIOG"] and await bus.is_connected()
            server.stop()
            assert not await bus.is_connected()
            with pytest.raises(BusConnectionError, match=f"127.0.0.1:{server.port}"):
                await bus.publish(order(9, "AIOG"))
        with pytest.raises(BusConnectionError):
            async with AsyncRedisEventBus(f"redis://127.0.0.1:{free_port()}/0", key_prefix=key_prefix):
                pass

    with EmbeddedRedis() as server:
        run(main(server))


def test_factory_dispatches_in_the_publish_transaction(settings, broker_url):
    # Given settings whose broker is a database of the bus's server: task messages join the MULTI
    async def main() -> None:
        async with AsyncEventBusFactory.create_from_env(settings) as bus:
            assert bus.dispatcher is not None and bus.dispatcher.stages_in_bus_pipeline
            receipt = await bus.publish(order(1, "AIOH"))
            receipts = await bus.publish_many([order(2, "AIOH"), signal(3, "AIOH")])
        assert "state" in receipt.dispatched and receipt.not_dispatched == ()
        assert receipts[0].dispatched == receipt.dispatched

    run(main())
    broker = redis.Redis.from_url(broker_url)
    # state is a log route: one wake-up for both publishes (its flag stayed set: no drain ran meanwhile)
    assert broker.llen(f"{settings.broker_key_prefix}tradebus.state") == 1
    broker.close()


def test_a_separate_broker_is_sent_from_a_worker_thread(redis_url, key_prefix):
    stub = StubDispatcher()

    async def main() -> None:
        async with AsyncRedisEventBus(redis_url, key_prefix=key_prefix, dispatcher=stub) as bus:
            receipt = await bus.publish(order(1, "AIOI"))
            assert "state" in receipt.dispatched
            stub.broker_down = True
            refused = await bus.publish_many([order(2, "AIOI")])
            return receipt, refused, await bus.read_log("AIOI")

    receipt, refused, logged = run(main())
    assert [(t.event.data["order_id"], t.log_id) for t in stub.sent if t.route == "state"] == [("1", receipt.log_id)]
    assert refused[0].dispatched == () and "state" in refused[0].not_dispatched
    pending = redis.Redis.from_url(redis_url).zrange(f"{key_prefix}:{{AIOI}}:dispatch:pending", 0, -1)
    assert pending == [refused[0].log_id.encode()] and len(logged) == 2  # logged; left for beat


def test_a_refused_channel_ends_the_stream_with_a_clear_error(key_prefix):
    async def main(port: int) -> None:
        url = f"redis://nochan:pw@127.0.0.1:{port}/0"
        async with AsyncRedisEventBus(url, key_prefix=key_prefix) as bus:
            with pytest.raises(BusPermissionError, match="&trades:\\*"):
                async with bus.events(symbol="AIOJ"):
                    pass
            stream = bus.events(symbol="AIOJ", types="order.created")
            with pytest.raises(BusPermissionError, match="trades:AIOJ:order.created"):
                await stream.__anext__()
            await stream.aclose()

    with EmbeddedRedis() as server:
        admin = server.client()
        admin.execute_command("ACL", "SETUSER", "nochan", "on", ">pw", f"~{key_prefix}:*", "resetchannels",
                              "+@all", "-@dangerous", "+time")  # fmt: skip
        admin.close()
        run(main(server.port))


def test_a_given_client_with_a_dispatcher(redis_url, key_prefix, settings):
    # Given a redis.asyncio client of the caller's: the dispatcher is attached to a blocking twin of it
    pytest.importorskip("celery")
    from bus.dispatch.dispatcher import Dispatcher

    stub, same_server = StubDispatcher(), Dispatcher.from_settings(settings)  # queues under the test's prefix

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        async with AsyncRedisEventBus(client=client, key_prefix=key_prefix, dispatcher=stub) as bus:
            receipt = await bus.publish(order(1, "AIOK"))
        # the stub cleared the pending-dispatch entry with the twin, from its worker thread
        assert "state" in receipt.dispatched and await client.zcard(f"{key_prefix}:{{AIOK}}:dispatch:pending") == 0
        async with AsyncRedisEventBus(client=client, key_prefix=key_prefix, dispatcher=same_server) as bus:
            assert same_server.stages_in_bus_pipeline  # the twin reaches the broker's server as the same user
            assert "state" in (await bus.publish(order(2, "AIOK"))).dispatched
        assert await client.ping()  # a given client stays open
        await client.aclose()

    run(main())
    same_server.close()


def test_publishes_are_counted_and_traced_as_the_blocking_bus_does(redis_url, key_prefix):
    # the metrics and the span live in the shared publish steps (bus/core/publisher.py)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client import REGISTRY

    from bus.observability import metrics, tracing

    def published() -> float:
        return REGISTRY.get_sample_value("tradebus_events_published_total", {"event_type": "order.created"}) or 0.0

    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    metrics.enable_metrics()
    tracing.set_tracer_provider(provider)
    try:
        before = published()

        async def main() -> str:
            async with AsyncRedisEventBus(redis_url, key_prefix=key_prefix) as bus:
                await bus.publish_many([order(1, "AIOL"), order(2, "AIOL")])
                return (await bus.publish(order(3, "AIOL"))).log_id

        log_id = run(main())
        assert published() - before == 3
        (span,) = exporter.get_finished_spans()  # publish() is traced (publish_many is not, as in the blocking bus)
        assert span.name == "publish order.created" and dict(span.attributes or {})["tradebus.log_id"] == log_id
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()
        metrics.disable_metrics()


def test_celery_publish_hooks_run_off_the_event_loop(settings):
    # Given an after_task_publish receiver (OpenTelemetry's Celery instrumentation is one): it may do
    # broker I/O, so the asyncio bus runs the staged messages' after-commit hooks in a worker thread
    from celery import signals

    calls: list[tuple[str, int]] = []

    def receiver(sender: str | None = None, **kw: Any) -> None:
        calls.append((str(sender), threading.get_ident()))

    signals.after_task_publish.connect(receiver, weak=False)
    try:

        async def main() -> int:
            async with AsyncEventBusFactory.create_from_env(settings) as bus:
                assert bus.dispatcher is not None and bus.dispatcher.stages_in_bus_pipeline
                # trade.failed goes to notify, an event route: one task message, staged (state and
                # risk are log routes: their wake-ups are not Celery task publishes)
                receipt = await bus.publish(TradeEvent.create_trade_failed("AIOM", "boom"))
                assert receipt.dispatched == ("notify",)
                return threading.get_ident()

        loop_thread = run(main())
    finally:
        signals.after_task_publish.disconnect(receiver)
    assert calls and all(thread != loop_thread for _, thread in calls)
