"""Tasks only tests use. Importing this module registers them on every app: in-process workers import
it (``celery_includes``), subprocess workers get ``--include tests.worker_tasks``."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from bus.core import state
from celery_app import routed_task


def _k(self: Any, name: str) -> str:
    return f"{self.ctx.keys.prefix}:test:{name}"


@routed_task(name="tradebus_test.record")
def record(self: Any, event_json: str, route: str = "") -> None:
    """Append 'route|event_type|symbol' to a list."""
    ev = self.event
    self.ctx.client.rpush(_k(self, "ran"), f"{route}|{ev.event_type.value}|{ev.symbol}")


@routed_task(name="tradebus_test.flaky")
def flaky(self: Any, event_json: str, route: str = "") -> None:
    """Fails until the attempt number reaches test:succeed_on (or always, if unset)."""
    client = self.ctx.client
    n = client.incr(_k(self, "attempts"))
    succeed_on = int(client.get(_k(self, "succeed_on")) or 0)
    if not succeed_on or n < succeed_on:
        raise ConnectionError(f"attempt {n} failed")
    client.set(_k(self, "done"), n)


@routed_task(name="tradebus_test.permanent")
def permanent(self: Any, event_json: str, route: str = "") -> None:
    self.ctx.client.incr(_k(self, "attempts"))
    err = ValueError("bad request (4xx)")
    err.retryable = False  # type: ignore[attr-defined]
    raise err


@routed_task(name="tradebus_test.crash")
def crash(self: Any, event_json: str, route: str = "") -> None:
    """A poison task: kills its own process every time."""
    self.ctx.client.incr(_k(self, "crash_runs"))
    os.kill(os.getpid(), signal.SIGKILL)


@routed_task(name="tradebus_test.apply_then_block")
def apply_then_block(self: Any, event_json: str, route: str = "") -> None:
    """Apply the projection, record the outcome and pid; on first delivery wait to be killed."""
    client = self.ctx.client
    changed = state.apply_event(client, self.ctx.keys, self.event)
    client.rpush(_k(self, "outcomes"), "1" if changed else "0")
    client.set(_k(self, "pid"), os.getpid())
    if not (self.request.delivery_info or {}).get("redelivered"):
        deadline = time.monotonic() + 60
        while not client.exists(_k(self, "release")) and time.monotonic() < deadline:
            time.sleep(0.05)  # a stand-in for long work; the test SIGKILLs this process meanwhile


@routed_task(name="tradebus_test.answer", ignore_result=False)
def answer(self: Any, event_json: str, route: str = "") -> dict[str, str]:
    """A task that keeps its result (a result backend stores it), and says what the header asked."""
    return {"route": route, "symbol": self.event.symbol, "trace": str(self.request.get("x_trace", ""))}
