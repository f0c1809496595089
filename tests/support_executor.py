"""Helpers for the executor tests: the bus to publish through, and polling with a deadline."""

from __future__ import annotations

from typing import Any

import redis

from bus.core.keys import Keys, channel
from bus.events.model import TradeEvent
from tests.support_bus import wait_for  # noqa: F401 - re-exported for the executor tests


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


def make_bus(url: str, key_prefix: str) -> Any:
    """The real RedisEventBus under this test's key prefix."""
    from bus.core.bus import RedisEventBus

    return RedisEventBus(url, key_prefix=key_prefix)


def has_subscriber_api(bus: Any) -> bool:
    return hasattr(bus, "listen_in_thread") and (hasattr(bus, "subscribe_type") or hasattr(bus, "subscribe"))
