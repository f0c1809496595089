"""A log route with RabbitMQ as the broker: the publish script sets the flags, the wake-ups go out through
Celery's producer right after, a real worker drains."""

from __future__ import annotations

import pytest
import redis

from bus.config import LoadEnvironmentVariables
from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.core.state import get_order
from bus.dispatch.dispatcher import Dispatcher
from bus.dispatch.logroutes.monitor import route_lag
from bus.dispatch.routing import LOG, Route, RoutingTable
from bus.events.model import TradeEvent
from celery_app import make_celery
from tests.helpers import wait_for
from tests.rabbitmq import AMQP_URL, skip_without_rabbitmq

pytestmark = [
    pytest.mark.redis, pytest.mark.celery, pytest.mark.rabbitmq,
    skip_without_rabbitmq,
]  # fmt: skip


def test_log_route_woken_over_amqp(redis_url, key_prefix, own_worker) -> None:
    s = LoadEnvironmentVariables(None, redis_url=redis_url, celery_broker_url=AMQP_URL, key_prefix=key_prefix)
    queue = f"{key_prefix}.state"  # a private queue: RabbitMQ is shared between test runs
    table = RoutingTable([Route("state", "tradebus.state.apply", queue, ("order.*",), mode=LOG)])
    app = make_celery(s, table, set_as_current=False)
    app.conf.broker_heartbeat = 2  # see test_celery_rabbitmq: a fresh worker's first messages (celery#4042)
    d = Dispatcher(s.broker_url, table, settings=s, app=app)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(key_prefix)
    try:
        with RedisEventBus(settings=s, dispatcher=d) as bus, own_worker(app, queues=queue):
            assert not d.stages_in_bus_pipeline
            receipts = bus.publish_many([TradeEvent.create_order_created("XAUUSD", f"r{i}", "BUY", 1.0, 1.0)
                                         for i in range(20)])  # fmt: skip
            receipts.append(bus.publish(TradeEvent.create_order_filled("XAUUSD", "r0", 1.0, 1.0)))
            assert all(r.dispatched == ("state",) for r in receipts)
            wait_for(lambda: all(get_order(client, keys, "XAUUSD", f"r{i}") for i in range(20))
                     and get_order(client, keys, "XAUUSD", "r0")["status"] == "filled",
                     what="every event projected")  # fmt: skip
            wait_for(lambda: [(g.lag, g.pending) for g in route_lag(client, keys, table)] == [(0, 0)],
                     what="the group drained")  # fmt: skip
            assert client.zcard(keys.pending_dispatch_for("XAUUSD")) == 0  # log routes need no dispatch record
    finally:
        with app.connection() as conn:
            conn.default_channel.queue_delete(queue)
        client.close()
