"""RabbitMQ as the broker with quorum queues (TRADEBUS_RABBITMQ_QUORUM_QUEUES), each test in a vhost of
its own (``rabbitmqctl add_vhost``), against ``celery -A celery_app worker`` subprocesses:

- a task retried with its route's backoff runs on quorum queues: the countdown waits in RabbitMQ's
  delay queues (Celery's native delayed delivery), not held unacked by the worker;
- the worker's AMQP connection closed by the broker mid-task: the task is redelivered and its effect
  happens once (the cancelled attempt applies nothing);
- publisher confirms: a publish the broker refuses (a full queue) is reported not dispatched and left
  pending for beat's redispatch, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from bus.config import LoadEnvironmentVariables, Settings
from bus.core.bus import RedisEventBus
from bus.dispatch.dispatcher import Dispatcher
from bus.events.model import TradeEvent
from tests.helpers import wait_for
from tests.logroute_effects import routes_file
from tests.rabbitmq import amqp_url, close_connections, rabbit_answers, rabbitmqctl
from tests.worker.rabbit_tasks import attempts_key, effects_key, release_key

pytestmark = [
    pytest.mark.redis, pytest.mark.celery, pytest.mark.rabbitmq, pytest.mark.faults, pytest.mark.slow,
    pytest.mark.skipif(not rabbit_answers(), reason="no RabbitMQ answering on 127.0.0.1:5672"),
]  # fmt: skip

QUEUE = "tradebus.notify"  # the route's queue, inside the test's own vhost
TASKS = "tests.worker.rabbit_tasks"


def settings_for(redis_url: str, key_prefix: str, vhost: str, routes: str) -> Settings:
    return LoadEnvironmentVariables(None, redis_url=redis_url, celery_broker_url=amqp_url(vhost),
                                    key_prefix=key_prefix, rabbitmq_quorum_queues=True, routes_file=routes,
                                    task_modules=(TASKS,))  # fmt: skip


def worker_env(settings: Settings) -> dict[str, str]:
    return {"TRADEBUS_RABBITMQ_QUORUM_QUEUES": "1", "TRADEBUS_ROUTES_FILE": str(settings.routes_file),
            "TRADEBUS_TASK_MODULES": TASKS}  # fmt: skip


def order(i: int) -> TradeEvent:
    return TradeEvent.create_order_created("RABBIT", f"r{i}", "BUY", 100.0 + i, 1.0)


def messages_in(url: str, queue: str) -> int:
    """How many messages RabbitMQ holds ready in ``queue`` (a passive declare: it must exist)."""
    with Connection(url) as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def test_a_retried_task_waits_out_its_backoff_in_rabbitmq_and_runs_on_quorum_queues(
    redis_url: str, key_prefix: str, vhost: str, tmp_path: Path, subprocess_worker: Callable[..., Any],
    worker_log: Callable[..., str],
) -> None:  # fmt: skip
    route = {"name": "flaky", "task": "tbtest.rabbit.flaky", "queue": QUEUE, "event_types": ["order.created"],
             "retry": {"max_retries": 4, "backoff": 2.0, "backoff_max": 4.0, "jitter": False}}  # fmt: skip
    s = settings_for(redis_url, key_prefix, vhost, routes_file(tmp_path / "routes.json", [route]))
    client = redis.Redis.from_url(redis_url)
    delayed: set[str] = set()
    with subprocess_worker(s, queues=QUEUE, extra_env=worker_env(s)) as proc:
        wait_for(lambda: "ready." in worker_log(s), 60, "the worker ready")
        with RedisEventBus(settings=s, dispatcher=Dispatcher.from_settings(s)) as bus:
            events = [order(i) for i in range(3)]
            for e in events:
                assert bus.publish(e).dispatched == ("flaky",)

        def done() -> bool:
            # meanwhile: where the retries wait (2 s, then 4 s): in RabbitMQ's delay queues, not in the worker
            for level in range(4):
                if messages_in(s.broker_url, f"celery_delayed_{level}"):
                    delayed.add(f"celery_delayed_{level}")
            return len(client.lrange(effects_key(key_prefix), 0, -1)) == len(events)

        wait_for(done, 90, f"every event applied after two retries\n{worker_log(s)[-3000:]}", interval=0.05)
        assert proc.poll() is None
    # Then each ran three times (two failures, then the effect), the effect once each
    assert sorted(x.decode() for x in client.lrange(effects_key(key_prefix), 0, -1)) == sorted(
        e.event_id for e in events
    )
    assert [int(client.get(attempts_key(key_prefix, e.event_id)) or 0) for e in events] == [3, 3, 3]
    assert delayed, "the countdowns never waited in RabbitMQ's delay queues (native delayed delivery)"
    assert "Direct exchanges are not supported" not in worker_log(s)
    # a worker of one queue (-Q) set native delayed delivery up for every queue it knows (none missing)
    assert "Native delayed delivery will not be available" not in worker_log(s)
    client.close()


def test_the_workers_connection_closed_mid_task_redelivers_it_and_the_effect_happens_once(
    redis_url: str, key_prefix: str, vhost: str, tmp_path: Path, subprocess_worker: Callable[..., Any],
    worker_log: Callable[..., str],
) -> None:  # fmt: skip
    route = {"name": "held", "task": "tbtest.rabbit.held", "queue": QUEUE, "event_types": ["order.created"]}
    s = settings_for(redis_url, key_prefix, vhost, routes_file(tmp_path / "routes.json", [route]))
    client = redis.Redis.from_url(redis_url)
    e = order(1)
    attempts = attempts_key(key_prefix, e.event_id)
    with subprocess_worker(s, queues=QUEUE, extra_env=worker_env(s)) as proc:
        wait_for(lambda: "ready." in worker_log(s), 60, "the worker ready")
        with RedisEventBus(settings=s, dispatcher=Dispatcher.from_settings(s)) as bus:
            assert bus.publish(e).dispatched == ("held",)
        # Given the task running (its first attempt holds)
        wait_for(lambda: client.get(attempts) == b"1", 60, f"the task started\n{worker_log(s)[-3000:]}")
        # When RabbitMQ closes every connection of the vhost (the worker's consumer among them)
        closed = close_connections(vhost)
        assert closed >= 1
        # Then the message, never acked, is delivered again once the worker has reconnected
        wait_for(lambda: client.get(attempts) == b"2", 90, f"the task redelivered\n{worker_log(s)[-3000:]}")
        client.set(release_key(key_prefix), 1)
        wait_for(lambda: client.llen(effects_key(key_prefix)) >= 1, 60, "the effect applied")
        wait_for(lambda: messages_in(s.broker_url, QUEUE) == 0, 30, "the queue empty")
        assert proc.poll() is None
    # ...and its effect happened once: the cancelled first attempt applied nothing
    assert [x.decode() for x in client.lrange(effects_key(key_prefix), 0, -1)] == [e.event_id]
    assert client.get(attempts) == b"2"
    assert "Connection to broker lost" in worker_log(s)
    client.close()


def test_publisher_confirms_report_a_refused_publish_as_not_dispatched(
    redis_url: str, key_prefix: str, vhost: str, tmp_path: Path
) -> None:
    """A queue that refuses publishes when full (an operator's policy: max-length 1, overflow
    reject-publish): with confirms the broker's nack reaches the dispatcher, which reports the route not
    dispatched and keeps the pending entry for beat's redispatch. Without them the publish returns and
    RabbitMQ drops the message."""
    route = {"name": "held", "task": "tbtest.rabbit.held", "queue": QUEUE, "event_types": ["order.created"]}
    s = settings_for(redis_url, key_prefix, vhost, routes_file(tmp_path / "routes.json", [route]))
    rabbitmqctl("set_policy", "-p", vhost, "--apply-to", "queues", "full-after-one", f"^{QUEUE}$",
                '{"max-length": 1, "overflow": "reject-publish"}')  # fmt: skip
    dispatcher = Dispatcher.from_settings(s)
    with RedisEventBus(settings=s, dispatcher=dispatcher) as bus:
        receipts = [bus.publish(order(i)) for i in range(4)]  # the queue takes one (RabbitMQ may let one more in)
        refused = [r for r in receipts if r.not_dispatched]
        assert receipts[0].dispatched == ("held",)
        assert refused and all(r.not_dispatched == ("held",) and not r.dispatched for r in refused)
        # each refused one is pending: beat's redispatch sends it again once the queue has room
        assert bus.client.zcard(bus.keys.pending_dispatch_for("RABBIT")) == len(refused)
    dispatcher.close()
