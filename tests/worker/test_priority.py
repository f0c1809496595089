"""A route's priority means the same on both brokers: 0-9, higher runs sooner (RabbitMQ's order; on Redis
celery_app.transport takes kombu's higher priority lists first)."""

from __future__ import annotations

import pytest
import redis

from bus.config import LoadEnvironmentVariables
from bus.core.bus import RedisEventBus
from bus.dispatch.routing import Route, RoutingTable
from bus.events.model import TradeEvent
from celery_app import make_celery
from tests.helpers import dispatcher_for, wait_for
from tests.rabbitmq import AMQP_URL, skip_without_rabbitmq

pytestmark = [pytest.mark.redis, pytest.mark.celery]


def _table(queue: str) -> RoutingTable:
    return RoutingTable([
        Route("bulk", "tradebus_test.record", queue, ("order.created",), priority=1),
        Route("urgent", "tradebus_test.record", queue, ("order.filled",), priority=8),
    ])  # fmt: skip


def _run_backlog_then_worker(settings, app, queue: str, own_worker) -> list[str]:
    """Queue 4 bulk then 4 urgent tasks while no worker runs; then one worker (prefetch 1) takes them."""
    client = redis.Redis.from_url(settings.bus_url, decode_responses=True)
    ran = f"{settings.key_prefix}:test:ran"
    with RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus:
        for i in range(4):
            bus.publish(TradeEvent.create_order_created("XAUUSD", f"b{i}", "BUY", 1.0, 1.0))
        for i in range(4):
            bus.publish(TradeEvent.create_order_filled("XAUUSD", f"u{i}", 1.0, 1.0))
        with own_worker(app, queues=queue):
            wait_for(lambda: client.llen(ran) == 8, timeout=30, what="8 tasks")
    return [row.split("|")[0] for row in client.lrange(ran, 0, -1)]


def test_higher_priority_first_on_redis(settings, own_worker) -> None:
    app = make_celery(settings, _table("tradebus.state"), set_as_current=False)
    assert _run_backlog_then_worker(settings, app, "tradebus.state", own_worker) == ["urgent"] * 4 + ["bulk"] * 4


@pytest.mark.rabbitmq
@skip_without_rabbitmq
def test_higher_priority_first_on_rabbitmq(redis_url, key_prefix, own_worker) -> None:
    s = LoadEnvironmentVariables(None, redis_url=redis_url, celery_broker_url=AMQP_URL, key_prefix=key_prefix)
    queue = f"{key_prefix}.prio"  # private: RabbitMQ is shared between test runs
    app = make_celery(s, _table(queue), set_as_current=False)
    app.conf.broker_heartbeat = 2  # see test_celery_rabbitmq: a new consumer's first delivery waits a tick
    try:
        # declared by the first publish with x-max-priority (task_queue_max_priority), as the worker declares it
        assert _run_backlog_then_worker(s, app, queue, own_worker) == ["urgent"] * 4 + ["bulk"] * 4
    finally:
        with app.connection() as conn:
            conn.default_channel.queue_delete(queue)
