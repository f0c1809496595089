"""An executor starts and trades while Redis is down, built the README's way; the reference README's
factory still refuses to build a bus for a Redis that is down unless asked not to connect."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from bus.config import LoadEnvironmentVariables
from bus.core.bus import RedisEventBus
from bus.dispatch.factory import EventBusFactory
from bus.embedded import EmbeddedRedis, free_port
from bus.errors import BusConnectionError
from bus.events.model import TradeEvent
from bus.executor.builder import ExecutorBuilder
from bus.executor.paper import PaperVenue
from tests.helpers import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.faults]
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
(OFFLINE_SNIPPET,) = [
    code for code in re.findall(r"```python\n(.*?)```", README, flags=re.S) if "connect=False" in code
]


def test_factory_raises_when_redis_is_down_unless_told_not_to_connect(key_prefix: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    cfg = LoadEnvironmentVariables(None, redis_url=url, key_prefix=key_prefix)
    # the reference README's factory, and the bus itself, check Redis at once
    with pytest.raises(redis.ConnectionError) as info:
        EventBusFactory.create_from_env(cfg)
    assert isinstance(info.value, BusConnectionError) and "Is the Redis container running?" in str(info.value)
    with pytest.raises(BusConnectionError):
        RedisEventBus(url, key_prefix=key_prefix)
    # connect=False builds it; each use then fails as a bus whose Redis went away does
    bus = EventBusFactory.create_from_env(cfg, connect=False)
    assert not bus.is_connected
    with pytest.raises(BusConnectionError):
        bus.publish(TradeEvent.create_order_created("XAUUSD", "o1", "BUY", 2000.0, 0.1))
    bus.close()


def test_the_readme_way_starts_an_executor_with_redis_down_and_sends_each_event_once_when_it_returns(
    tmp_path: Path, key_prefix: str
) -> None:
    # Given a Redis that is not running yet, and the README's snippet for starting an executor anyway
    server = EmbeddedRedis(appendonly=True)
    broker_url = server.url.rsplit("/", 1)[0] + "/1"  # the Celery broker: a database of the same server
    ns: dict[str, Any] = {
        "EventBusFactory": EventBusFactory,
        "ExecutorBuilder": ExecutorBuilder,
        "env_config": LoadEnvironmentVariables(
            None, redis_url=server.url, celery_broker_url=broker_url, key_prefix=key_prefix
        ),
        "executor_config": {"source": "offline", "outbox_path": str(tmp_path / "ob.db"), "outbox_flush_interval": 0.05},
        "client": PaperVenue(),
        "logger": logging.getLogger("offline"),
    }
    exec(compile(OFFLINE_SNIPPET, "README.md", "exec"), ns)  # noqa: S102
    executor, venue, bus = ns["trade_executor"], ns["client"], ns["event_bus"]
    try:
        # When it trades with Redis down: the orders execute on the venue, their events wait in the outbox
        venue.set_price("XAUUSD", "2000")
        ticket = executor.buy("XAUUSD", "1.5")
        venue.set_price("XAUUSD", "2004")
        executor.close_position(venue.positions()[0]["position_id"])
        assert ticket.status == "filled" and venue.positions() == []
        queued = [e for _, e in executor.publisher.outbox.peek(1000)]
        assert executor.pending_events == len(queued) >= 5
        # ... and then Redis starts
        server.start()
        wait_for(lambda: executor.pending_events == 0, what="the outbox to flush")
        # Then every event is in the log once, in the order it happened, and its tasks were enqueued once
        assert [e.event_id for _, e in bus.read_log("XAUUSD")] == [e.event_id for e in queued]
        broker = redis.Redis.from_url(broker_url)
        messages = [json.loads(m) for key in broker.keys("tradebus.*") for m in broker.lrange(key, 0, -1)]
        assert Counter(m["headers"]["id"] for m in messages) == Counter(
            f"{e.event_id}:{r.name}" for e in queued for r in bus.dispatcher.routes_for(e)
        )
        broker.close()
        assert executor.wait_until_listening(10)  # the kill-switch listener connected too
    finally:
        executor.close()
        bus.close()
        server.close()
