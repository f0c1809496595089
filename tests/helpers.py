"""Plain helpers the tests import (fixtures live in the conftest.py files, found by pytest): polling
with a deadline, key cleanup, a dispatcher for an app, the environment of a ``tradebus`` command,
and a bare publisher for subprocesses."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import redis

from bus.config import Settings
from bus.core.keys import Keys, channel
from bus.core.keyspace import delete_matching
from bus.dispatch.dispatcher import Dispatcher
from bus.events.model import TradeEvent


def wait_for(
    condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition", interval: float = 0.005
) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` on ``url``'s database (also "{prefix}-other" tenants)."""
    client = redis.Redis.from_url(url)
    try:
        delete_matching(client, f"{prefix}*")
    finally:
        client.close()


def dispatcher_for(app: Any, settings: Settings, **kw: Any) -> Dispatcher:
    """A dispatcher that sends through ``app`` (its queues, its routing table)."""
    return Dispatcher(settings.broker_url, app.tradebus.routing, settings=settings, app=app, **kw)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a ``python -m bus.cli`` subprocess: this one without its REDIS_* / CELERY_* /
    TRADEBUS_* settings, plus ``extra``; 200 columns, so rich wraps no line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_", "TRADEBUS_"))}
    env.update(extra)
    env["COLUMNS"] = "200"
    return env


class StreamBus:
    """A minimal real-Redis publisher (XADD + PUBLISH) for a subprocess that needs a bus that fails
    for real on every publish (RedisEventBus refuses to be built while Redis is down)."""

    def __init__(self, url: str, key_prefix: str) -> None:
        self.client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2)
        self.keys = Keys(key_prefix)

    def publish(self, event: TradeEvent) -> str:
        raw = event.encode()
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.keys.log(event.symbol), {"event": raw})
        pipe.publish(channel(event.symbol, event.event_type), raw)
        log_id, _ = pipe.execute()
        return log_id.decode()

    def read_log(self, symbol: str, after: str = "-", count: int | None = None) -> list[tuple[str, TradeEvent]]:
        rows = self.client.xrange(self.keys.log(symbol), min=after, count=count)
        return [(i.decode(), TradeEvent.from_json(f[b"event"])) for i, f in rows]

    def close(self) -> None:
        self.client.close()
