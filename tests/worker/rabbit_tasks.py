"""Tasks of the RabbitMQ fault tests (tests/worker/test_rabbitmq_quorum.py), reached by a subprocess worker
through TRADEBUS_TASK_MODULES. Each records its attempts and its effect under the test's key prefix."""

from __future__ import annotations

import time
from typing import Any

from celery_app import routed_task

#: seconds a held task waits for the test to release it
HOLD_LIMIT = 120.0


def attempts_key(prefix: str, event_id: str) -> str:
    return f"{prefix}:test:attempts:{event_id}"


def effects_key(prefix: str) -> str:
    return f"{prefix}:test:effects"


def release_key(prefix: str) -> str:
    return f"{prefix}:test:release"


@routed_task(name="tbtest.rabbit.flaky")
def flaky(self: Any, event_json: str, route: str = "") -> None:
    """Fails its first two attempts (a downstream blip), so the route's backoff retries it; then applies."""
    prefix, event_id = self.ctx.keys.prefix, self.event.event_id
    if self.ctx.client.incr(attempts_key(prefix, event_id)) <= 2:
        raise ConnectionError("downstream unreachable")
    self.ctx.client.rpush(effects_key(prefix), event_id)


@routed_task(name="tbtest.rabbit.held")
def held(self: Any, event_json: str, route: str = "") -> None:
    """Counts its attempt, then waits until the test releases it (its AMQP connection is killed meanwhile);
    only then applies its effect. An attempt the worker cancels never applies it."""
    client, prefix, event_id = self.ctx.client, self.ctx.keys.prefix, self.event.event_id
    client.incr(attempts_key(prefix, event_id))
    deadline = time.monotonic() + HOLD_LIMIT
    while not client.exists(release_key(prefix)):
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.05)
    client.rpush(effects_key(prefix), event_id)
