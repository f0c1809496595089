"""The RabbitMQ broker path (amqp://): dispatch through Celery's producer, a real worker, JSON only."""

from __future__ import annotations

import amqp.exceptions
import pytest
import redis

from bus.config import LoadEnvironmentVariables
from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.core.state import get_order
from bus.dispatch.routing import Route, RoutingTable
from bus.events.model import TradeEvent
from celery_app import make_celery
from celery_app.config import QUORUM_DELIVERY_LIMIT
from tests.helpers import wait_for
from tests.rabbitmq import AMQP_URL, skip_without_rabbitmq

pytestmark = [pytest.mark.redis, pytest.mark.celery, pytest.mark.rabbitmq, skip_without_rabbitmq]


def test_publish_dispatches_over_amqp_and_worker_applies(redis_url, key_prefix, own_worker) -> None:
    s = LoadEnvironmentVariables(None, redis_url=redis_url, celery_broker_url=AMQP_URL, key_prefix=key_prefix)
    queue = f"{key_prefix}.state"  # a private queue: RabbitMQ is shared between test runs
    table = RoutingTable([Route("state", "tradebus.state.apply", queue, ("order.*",))])
    app = make_celery(s, table, set_as_current=False)
    # A freshly started worker takes messages that arrive with its consume-ok only on its next
    # heartbeat tick (celery#4042: up to broker_heartbeat/3, 10 s with our 30 s). Later messages are
    # immediate. A short heartbeat keeps this test from waiting on that start-up quirk.
    app.conf.broker_heartbeat = 2
    assert app.conf.broker_transport_options["confirm_publish"] is True
    from bus.dispatch.dispatcher import Dispatcher

    d = Dispatcher(s.broker_url, table, settings=s, app=app)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(key_prefix)
    try:
        with RedisEventBus(settings=s, dispatcher=d) as bus, own_worker(app, queues=queue):
            assert not d.stages_in_bus_pipeline
            receipts = [bus.publish(TradeEvent.create_order_created("XAUUSD", f"r{i}", "BUY", 1.0, 1.0))
                        for i in range(5)]  # fmt: skip
            assert all(r.dispatched == ("state",) for r in receipts)
            wait_for(lambda: all(get_order(client, keys, "XAUUSD", f"r{i}") for i in range(5)), what="5 orders")
            assert client.zcard(keys.pending_dispatch_for("XAUUSD")) == 0
    finally:
        with app.connection() as conn:
            conn.default_channel.queue_delete(queue)
        client.close()


def test_quorum_queues_with_a_delivery_limit_carry_the_tasks(redis_url, key_prefix, own_worker) -> None:
    """TRADEBUS_RABBITMQ_QUORUM_QUEUES: the tradebus queues are declared quorum queues with a delivery
    limit, and a worker consumes them (per-consumer QoS; confirms on)."""
    s = LoadEnvironmentVariables(None, redis_url=redis_url, celery_broker_url=AMQP_URL, key_prefix=key_prefix,
                                 rabbitmq_quorum_queues=True)  # fmt: skip
    queue = f"{key_prefix}.state"
    table = RoutingTable([Route("state", "tradebus.state.apply", queue, ("order.*",))])
    app = make_celery(s, table, set_as_current=False)
    app.conf.broker_heartbeat = 2  # see above (celery#4042)
    declared = {q.name: q.queue_arguments for q in app.conf.task_queues}
    assert declared[queue] == {"x-queue-type": "quorum", "x-delivery-limit": QUORUM_DELIVERY_LIMIT}
    from bus.dispatch.dispatcher import Dispatcher

    d = Dispatcher(s.broker_url, table, settings=s, app=app)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(key_prefix)
    try:
        with RedisEventBus(settings=s, dispatcher=d) as bus, own_worker(app, queues=queue):
            for i in range(3):
                assert bus.publish(TradeEvent.create_order_created("XAUUSD", f"q{i}", "BUY", 1.0, 1.0)).dispatched
            wait_for(lambda: all(get_order(client, keys, "XAUUSD", f"q{i}") for i in range(3)), what="3 orders")
        # RabbitMQ holds it as a quorum queue: declaring it classic now is refused as inequivalent
        with app.connection() as conn, pytest.raises(amqp.exceptions.PreconditionFailed, match="x-queue-type"):
            conn.default_channel.queue_declare(
                queue, durable=True, auto_delete=False, arguments={"x-queue-type": "classic"}
            )
    finally:
        with app.connection() as conn:
            conn.default_channel.queue_delete(queue)
        client.close()
