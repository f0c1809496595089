"""What a worker adds and checks as it starts (Celery's ``worker_init``, after ``-Q`` and ``-I`` are applied).

- Started without ``-Q``, it consumes every routed queue: ``task_queues`` has those routes name, and the
  queues the app's router (``task_routes``) gives the routes that name none are added here. Started with
  ``-Q``, the routed queues it leaves out are logged (``tradebus doctor`` flags a routed queue that no live
  worker consumes).
- With quorum queues on RabbitMQ, every queue the app defines is declared, consumed or not: Celery's native
  delayed delivery (countdowns, retry backoff) binds them all (queue and exchange) as the worker starts,
  one missing fails the binding, and Celery then runs without it: a retry published to the delay
  exchanges would be dead-lettered into nothing (seen with a worker started with ``-Q`` one queue).
- A route whose task is a plain Celery task (not declared with ``@routed_task``) would run without its
  route's retry policy and dead letters, and one whose task this worker does not have would be
  dead-lettered as unregistered: both are logged as warnings, with the fix.

``routed_queues`` and ``route_problems`` are also what ``tradebus routes`` and ``tradebus doctor`` show.
"""

from __future__ import annotations

import logging
from typing import Any

from bus.dispatch.messages import routed_queue
from bus.dispatch.routing import RoutingTable

log = logging.getLogger(__name__)


def routed_queues(app: Any, routing: RoutingTable) -> dict[str, list[str]]:
    """Every queue tradebus uses (its own, then the routes' in table order) -> the routes sending to it."""
    queues: dict[str, list[str]] = {q: [] for q in routing.queues}
    for r in routing:
        queues.setdefault(r.queue or routed_queue(app, r.task), []).append(r.name)
    return queues


def route_problems(app: Any, routing: RoutingTable) -> list[str]:
    """Routes whose task would not run as the route says in ``app``, each with its fix."""
    from .tasks.base import TradebusTask

    problems = []
    for r in routing:
        task = app.tasks.get(r.task)
        if task is None:
            problems.append(
                f"route {r.name!r}: task {r.task!r} is not registered here, so its messages are dead-lettered "
                "as unregistered; name its module in TRADEBUS_TASK_MODULES"
            )
        elif not isinstance(task, TradebusTask):
            problems.append(
                f"route {r.name!r}: task {r.task!r} is a plain Celery task, so the route's retry policy and "
                "dead letters do not apply; declare it with @celery_app.routed_task"
            )
    return problems


def routes_at_worker_init(sender: Any = None, **_: Any) -> None:
    """``worker_init`` receiver (connected by make_celery): add the routed queues, warn about the routes."""
    app: Any = getattr(sender, "app", None)
    ctx = getattr(app, "tradebus", None)
    if ctx is None:  # a worker of an app make_celery did not build
        return
    queues = app.amqp.queues
    # Celery keeps -Q's selection there, None without -Q (no public way to ask; 5.4 to 5.7)
    everything = getattr(queues, "_consume_from", ()) is None
    consumed = queues.consume_from
    for name, routes in routed_queues(app, ctx.routing).items():
        if name in consumed:
            continue
        if everything:
            queues.select_add(name)  # consumed with the others
        elif routes:
            log.warning("queue %s of route(s) %s is not consumed by this worker (-Q %s)",
                        name, ", ".join(routes), ",".join(consumed))  # fmt: skip
    for problem in route_problems(app, ctx.routing):
        log.warning("%s", problem)
    if app.conf.worker_detect_quorum_queues and app.conf.task_default_queue_type == "quorum":
        declare_queues(app)


def declare_queues(app: Any) -> None:
    """Declare every queue ``app`` defines, with its exchange and binding (idempotent; bounded retries on
    a dead broker)."""
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in app.amqp.queues.values():
                queue.bind(channel).declare()
    except Exception as e:  # noqa: BLE001 - the worker still starts; Celery logs its delayed-delivery setup
        log.warning("could not declare the queues before native delayed delivery: %s", e)
