"""The Celery configuration, built from a Settings object (the same settings the bus and tests use)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from bus.config import Settings
from bus.dispatch.amqp import CONFIRM_OPTIONS, QUORUM_DELIVERY_LIMIT, amqp_queue_config
from bus.dispatch.messages import (
    MAX_PRIORITY,
    PRIORITY_STEPS,
    PUBLISH_RETRY_POLICY,
    broker_key_prefix_option,
    broker_sentinel_option,
)
from bus.dispatch.names import QUEUES, STATE_QUEUE
from bus.dispatch.routing import MAX_BACKOFF_SECONDS, RoutingTable

# kombu's own Redis transport (redis+socket:// brokers, which name it in their URL): a message taken but
# not acked within this many seconds is handed to another worker. With no heartbeat it must exceed every
# retry countdown / ETA, or the waiting message is redelivered again and again (celery#2599, kombu#337):
# routing caps backoff at MAX_BACKOFF_SECONDS, this is twice that. Our transport needs no such wait
# (recovery_options).
VISIBILITY_TIMEOUT = int(2 * MAX_BACKOFF_SECONDS)
# Broker URL schemes served by celery_app.transport once registered (redis+socket:// keeps kombu's own):
# one server, and a Sentinel master (kombu's spelling, sentinel://h:p/db;sentinel://h:p/db).
SINGLE_TRANSPORT_SCHEMES = ("redis", "rediss")
SENTINEL_TRANSPORT_SCHEME = "sentinel"
OUR_TRANSPORT_SCHEMES = (*SINGLE_TRANSPORT_SCHEMES, SENTINEL_TRANSPORT_SCHEME)
# A task message is refused unparsed past this many times TRADEBUS_MAX_EVENT_BYTES: an event becomes a
# body JSON-escaped (at most ~6x for \uXXXX escapes) then base64'd (4/3), plus Celery's headers.
MAX_MESSAGE_FACTOR = 16
# A message redelivered more often than this (its worker died each time) is dead-lettered, not run.
REDELIVERY_CAP = 3
# Quorum queues (TRADEBUS_RABBITMQ_QUORUM_QUEUES): RabbitMQ drops a message delivered more often than
# QUORUM_DELIVERY_LIMIT (bus.dispatch.amqp), a second guard behind REDELIVERY_CAP.
assert QUORUM_DELIVERY_LIMIT > REDELIVERY_CAP
# Hard limit per task: a hung task is killed rather than holding its queue's only prefetch slot.
TASK_TIME_LIMIT = 600


def recovery_options(worker_lost_timeout: float) -> dict[str, float]:
    """Transport options (celery_app.heartbeat) that run a dead worker's tasks again within
    ``worker_lost_timeout`` seconds, in steps of a sixth of it:

    - each live worker refreshes the messages it holds, and sweeps for stale ones, every step;
    - a message is stale after 4 steps without a refresh: a live worker would have to miss three
      heartbeats in a row to lose one (it would then run twice; effects are idempotent, G3);
    - a worker killed just after a refresh: its messages go stale 4 steps later, the next sweep comes
      within 1 step, and the sweep lock of a worker killed mid-sweep expires after 1 step: 6 steps.
    """
    step = worker_lost_timeout / 6
    return {"visibility_timeout": 4 * step, "unacked_refresh_interval": step, "unacked_mutex_expire": step}


def celery_config(settings: Settings, routing: RoutingTable | None = None) -> dict[str, Any]:
    routing = routing if routing is not None else RoutingTable.default()
    broker = settings.broker_url
    scheme = urlsplit(broker).scheme
    # sentinel://: our transport on kombu's SentinelChannel, finding the master (broker_sentinel_option)
    is_redis = scheme in ("redis", "rediss", "redis+socket", "unix", "socket", "sentinel")
    ours = scheme in OUR_TRANSPORT_SCHEMES
    timeouts = {
        # Half-open sockets must fail, not hang a worker forever (celery#10569).
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": settings.redis_health_check_interval,
    }
    transport: dict[str, Any] = (
        {
            **(recovery_options(settings.worker_lost_timeout) if ours else {"visibility_timeout": VISIBILITY_TIMEOUT}),
            "max_message_bytes": MAX_MESSAGE_FACTOR * settings.max_event_bytes,
            "priority_steps": list(PRIORITY_STEPS),
            **timeouts,
            **broker_key_prefix_option(broker, settings),
            **broker_sentinel_option(settings),
        }
        # RabbitMQ: publisher confirms, so a publish that returned is on the broker.
        if is_redis
        else dict(CONFIRM_OPTIONS)
    )
    # Bounded reconnect attempts while publishing: apply_async/send_task must not hang on a dead broker.
    transport.update(max_retries=PUBLISH_RETRY_POLICY["max_retries"], interval_start=0,
                     interval_step=0.2, interval_max=0.5)  # fmt: skip
    tls = settings.ssl_options(broker)
    quorum = settings.rabbitmq_quorum_queues and not is_redis
    conf: dict[str, Any] = {
        "broker_url": broker,
        # redis:// and rediss:// are served by celery_app.transport (make_celery registers it under those
        # schemes): it survives any bytes on a queue, recovers a dead worker's tasks within
        # TRADEBUS_WORKER_LOST_TIMEOUT, takes higher priorities first, and keeps one redis-py client per
        # pool instead of one per ack / QoS step (~40-65% more tasks/s on one solo worker here).
        # A consumer that dead-letters every message it cannot run, and checks arguments before the pool.
        "worker_consumer": "celery_app.consumer:Consumer",
        "broker_transport_options": transport,
        # rediss:// broker: the same CA / client certificate settings as the bus (safe by default).
        **({"broker_use_ssl": tls, "redis_backend_use_ssl": tls} if tls else {}),
        # JSON only, in and out: a pickle message is refused, never unpickled (safe by default).
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Ack after the task ran, not when it was received: a worker that dies mid-task leaves the
        # message to be redelivered (at-least-once tasks). Tasks are idempotent, so running twice is
        # safe (effectively-once effects).
        "task_acks_late": True,
        # ...and if the pool child is killed (SIGKILL, OOM), requeue instead of acking; the base task
        # counts redeliveries and dead-letters past REDELIVERY_CAP, so a poison task cannot loop.
        "task_reject_on_worker_lost": True,
        # A failed task is dead-lettered by the base task before Celery acks it.
        "task_acks_on_failure_or_timeout": True,
        # Reserve one message at a time: with acks_late a prefetched backlog would sit unacked on a
        # busy worker while others idle, and all of it would be redelivered if that worker dies.
        "worker_prefetch_multiplier": 1,
        # On a lost broker connection, cancel running acks_late tasks: their messages are redelivered
        # anyway, and running them to completion too would run each twice.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Keep trying to reach the broker at start-up (a worker starting before Redis is normal under
        # compose); explicit because Celery 6 changes the default.
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,  # a worker reconnects until the broker is back
        "broker_connection_timeout": settings.redis_connect_timeout,
        "broker_heartbeat": 30,  # AMQP: detect a dead RabbitMQ connection within ~a minute
        "broker_pool_limit": 10,
        # Publishing (retries, beat, dispatch through Celery) gives up after a bounded time.
        "task_publish_retry": True,
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        # No result backend: effects live in Redis state, and task results are never read.
        "task_ignore_result": True,
        "task_time_limit": TASK_TIME_LIMIT,
        # One queue per concern, so operators can scale state, risk, notify and reconcile apart. A worker
        # started without -Q consumes them all, and the queues of routes the router places (celery_app.startup).
        # Declared as bus.dispatch.amqp says (the bus's publisher declares them the same way): priorities
        # 0-9, or quorum queues with a delivery limit and native delayed delivery for countdowns.
        **amqp_queue_config(routing.queues, quorum, MAX_PRIORITY),
        # A task-sent event per task this app sends (Flower's "sent"), when TRADEBUS_TASK_SEND_SENT_EVENT is set.
        "task_send_sent_event": settings.task_send_sent_event,
        # Your task modules (TRADEBUS_TASK_MODULES), imported by the worker like -I would.
        "include": list(settings.task_modules),
        "task_default_queue": STATE_QUEUE,
        # tradebus.<concern>.* runs on queue tradebus.<concern> (bus.dispatch.names)
        "task_routes": {f"{q}.*": {"queue": q} for q in QUEUES},
        "task_default_priority": 0,
        "timezone": "UTC",
        "enable_utc": True,
        "worker_hijack_root_logger": False,
    }  # fmt: skip
    return conf
