"""A task for the dead-worker tests (``--include tests.worker.held_tasks``): it retries once after a countdown."""

from __future__ import annotations

from typing import Any

from celery_app import routed_task


@routed_task(name="tradebus_test.retry_later")
def retry_later(self: Any, event_json: str, route: str = "") -> None:
    """Record 'worker|retries|redelivered'; the first attempt retries after ``test:countdown`` seconds."""
    client, prefix = self.ctx.client, self.ctx.keys.prefix
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    client.rpush(f"{prefix}:test:attempts", f"{self.request.hostname}|{self.request.retries}|{int(redelivered)}")
    if self.request.retries == 0:
        raise self.retry(countdown=float(client.get(f"{prefix}:test:countdown")), max_retries=1)
