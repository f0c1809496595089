"""RabbitMQ (``amqp://``) as the Celery broker: the tradebus queues as workers declare them, and
publisher confirms. One definition for both publishing sides: the worker's app (celery_app.config) and
the bus's own publisher app (bus.dispatch.messages.publisher_app). RabbitMQ refuses to redeclare a
queue with other arguments (PRECONDITION_FAILED), so the side that declares a queue first must declare
what the other expects; and a publish confirmed by the broker is on the broker (at-least-once tasks).

Quorum queues (TRADEBUS_RABBITMQ_QUORUM_QUEUES) are replicated on a RabbitMQ cluster and take a
delivery limit. They support neither per-message TTL nor priorities beyond two levels, so Celery (>= 5.5)
runs countdowns and ETAs through RabbitMQ itself ("native delayed delivery": the message waits in a
cascade of ``celery_delayed_N`` queues whose TTLs dead-letter it back to its queue) instead of a worker
holding it unacked; that works only for queues bound to a topic exchange, so the tradebus queues get
one (the routing key is the queue's full name: it routes exactly as a direct exchange would).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# RabbitMQ drops a quorum queue's message delivered more often than this. The base task dead-letters
# at its redelivery cap (celery_app.config.REDELIVERY_CAP, 3) first; the limit catches a message whose
# worker dies before the base task can count it (a crash while decoding, an OOM in the pool).
QUORUM_DELIVERY_LIMIT = 3 + 2
#: publisher confirms: a publish returns once RabbitMQ has the message (a nack or a timeout raises)
CONFIRM_OPTIONS = {"confirm_publish": True}


def amqp_queue_config(queue_names: Iterable[str], quorum: bool, max_priority: int) -> dict[str, Any]:
    """Celery settings that declare ``queue_names`` as the workers do: classic queues with priorities
    0-``max_priority``, or quorum queues (delivery limit, topic exchanges, native delayed delivery for countdowns)."""
    from kombu import Exchange, Queue

    arguments = {"x-queue-type": "quorum", "x-delivery-limit": QUORUM_DELIVERY_LIMIT} if quorum else None
    exchange_type = "topic" if quorum else "direct"
    queues = [Queue(q, Exchange(q, type=exchange_type), routing_key=q, queue_arguments=arguments)
              for q in queue_names]  # fmt: skip
    return {
        "task_queues": queues,
        # Priorities 0-9, higher first: RabbitMQ queues are declared with x-max-priority (an existing
        # queue declared without it must be deleted once). Quorum queues refuse x-max-priority.
        "task_queue_max_priority": None if quorum else max_priority,
        # Quorum queues: per-consumer QoS (they refuse global QoS), native delayed delivery for countdowns
        **({"task_default_queue_type": "quorum", "worker_detect_quorum_queues": True} if quorum else {}),
    }
