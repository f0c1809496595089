"""A user's task module, reached by a worker only through TRADEBUS_TASK_MODULES (tests/worker/test_celery_native.py)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from celery_app import routed_task


@routed_task(name="user.fills.book")
def book(self: Any, event_json: str, route: str = "") -> None:
    """Books a fill in a ledger that is down: every attempt fails (counted), so the route's policy decides."""
    attempts = self.ctx.client.incr(f"{self.ctx.keys.prefix}:user:attempts")
    raise ConnectionError(f"ledger unreachable (attempt {attempts})")


@shared_task(name="user.fills.plain")
def plain(event_json: str, route: str = "") -> None:
    """A plain Celery task a route names: the worker warns that the route's policy does not apply to it."""
