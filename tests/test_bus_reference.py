"""The reference README's snippets, verbatim except for the import lines (and the Context Manager
snippet's ``create_order_created(...)`` placeholder, filled with the README's own arguments)."""

from __future__ import annotations

import textwrap
import threading

import pytest
import redis

from bus import EventBusFactory, LoadEnvironmentVariables, TradeEvent, TradeEventType
from bus.embedded import EmbeddedRedis
from tests.helpers import wait_for

pytestmark = pytest.mark.redis

ORDER = dict(symbol="XAUUSD", order_id="12345", order_type="BUY", price=2000.50, volume=0.1)


def run(code: str, namespace: dict) -> None:
    exec(compile(textwrap.dedent(code), "<readme>", "exec"), namespace)  # noqa: S102


def names(env_config, **more):
    return {"EventBusFactory": EventBusFactory, "TradeEvent": TradeEvent, "TradeEventType": TradeEventType,
            "LoadEnvironmentVariables": LoadEnvironmentVariables, "redis": redis, "threading": threading,
            "env_config": env_config, **more}  # fmt: skip


SUBSCRIBE_TYPE = """
def handle_order_created(event: TradeEvent):
    print(f"New order: {event.data['order_id']} at {event.data['price']}")

# Subscribe
event_bus.subscribe("XAUUSD", TradeEventType.ORDER_CREATED, handle_order_created)

# Start listening (blocking)
event_bus.listen()
"""

SUBSCRIBE_ALL = """
def handle_all_events(event: TradeEvent):
    print(f"Event: {event.event_type.value} for {event.symbol}")
    print(f"Data: {event.data}")

# Subscribe to all events for a symbol
event_bus.subscribe_all("XAUUSD", handle_all_events)

# Start listening
event_bus.listen()
"""

THREADING = """
import threading

def event_listener():
    event_bus.subscribe_all("XAUUSD", handle_event)
    event_bus.listen()

# Start listener in background thread
listener_thread = threading.Thread(target=event_listener, daemon=True)
listener_thread.start()

# Main thread continues...
"""


@pytest.mark.parametrize("snippet", [SUBSCRIBE_TYPE, SUBSCRIBE_ALL], ids=["specific-type", "all-events"])
def test_subscribing_snippets(settings, capsys, snippet):
    event_bus = EventBusFactory.create_from_env(settings)
    publisher = EventBusFactory.create_from_env(settings)
    ns = names(settings, event_bus=event_bus)
    listener = threading.Thread(target=run, args=(snippet, ns), daemon=True)
    listener.start()
    assert event_bus.wait_until_listening(10)
    publisher.publish(TradeEvent.create_order_created(**ORDER))
    publisher.publish(TradeEvent.create_order_filled(symbol="XAUUSD", order_id="12345", fill_price=2000.5, volume=0.1))
    out = []
    wait_for(
        lambda: out.append(capsys.readouterr().out) or "2000.5" in "".join(out),
        what="handler output",
    )
    event_bus.stop()
    listener.join(5)
    assert not listener.is_alive()
    text = "".join(out)
    if snippet is SUBSCRIBE_TYPE:
        assert "New order: 12345 at 2000.5" in text
    else:
        wait_for(lambda: out.append(capsys.readouterr().out) or "order.filled" in "".join(out))
        text = "".join(out)
        assert "Event: order.created for XAUUSD" in text and "Event: order.filled for XAUUSD" in text
        assert "Data: {'order_id': '12345'" in text
    publisher.close()
    event_bus.close()


def test_threading_snippet(settings):
    event_bus = EventBusFactory.create_from_env(settings)
    seen: list[TradeEvent] = []
    ns = names(settings, event_bus=event_bus, handle_event=seen.append)
    run(THREADING, ns)
    assert event_bus.wait_until_listening(10)
    event_bus.publish(TradeEvent.create_order_created(**ORDER))
    wait_for(lambda: len(seen) == 1)
    assert seen[0].data["order_id"] == "12345"
    event_bus.stop()
    ns["listener_thread"].join(5)
    assert not ns["listener_thread"].is_alive()
    event_bus.close()


QUERYING = """
# Get position state
position = event_bus.get_position("XAUUSD", "67890")
print(position)  # {'position_id': '67890', 'status': 'active', ...}

# Get order state
order = event_bus.get_order("XAUUSD", "12345")
print(order)  # {'order_id': '12345', 'status': 'pending', ...}

# Get all active positions for a symbol
positions = event_bus.get_active_positions("XAUUSD")
for pos in positions:
    print(f"Position {pos['position_id']}: {pos['volume']} lots")
"""


def test_querying_state_snippet(settings, capsys):
    event_bus = EventBusFactory.create_from_env(settings, apply_state=True)
    event_bus.publish(TradeEvent.create_order_created(**ORDER, sl=1995.00, tp=2010.00))
    event_bus.publish(
        TradeEvent.create_position_opened(
            symbol="XAUUSD", position_id="67890", entry_price=2000.50, volume=0.1, direction="LONG"
        )
    )
    ns = names(settings, event_bus=event_bus)
    run(QUERYING, ns)
    out = capsys.readouterr().out
    assert ns["position"]["position_id"] == "67890" and ns["position"]["status"] == "active"
    assert ns["order"]["order_id"] == "12345" and ns["order"]["status"] == "pending"
    assert ns["order"]["sl"] == "1995.0" and ns["order"]["tp"] == "2010.0"
    assert "Position 67890: 0.1 lots" in out
    assert "'status': 'active'" in out and "'status': 'pending'" in out
    event_bus.close()


ERROR_HANDLING = """
try:
    event_bus = EventBusFactory.create_from_env(env_config)
except ImportError:
    print("redis-py not installed. Install with: pip install redis")
except redis.ConnectionError:
    print("Cannot connect to Redis. Is the Docker container running?")

# Check connection status
if event_bus.is_connected:
    event_bus.publish(event)
else:
    print("Redis connection lost")
"""


def test_error_handling_snippet_connected(settings, capsys, redis_client, key_prefix):
    event = TradeEvent.create_order_created(**ORDER)
    ns = names(settings, event=event)
    run(ERROR_HANDLING, ns)
    assert capsys.readouterr().out == ""
    assert redis_client.xlen(f"{key_prefix}:{{XAUUSD}}:log") == 1
    ns["event_bus"].close()


def test_error_handling_snippet_redis_down(settings, capsys, key_prefix):
    # Given a bus whose server then went away, and settings pointing at a server that is not there
    with EmbeddedRedis() as server:
        env_config = LoadEnvironmentVariables(None, redis_url=server.url, key_prefix=key_prefix)
        event_bus = EventBusFactory.create_from_env(env_config)
        assert event_bus.is_connected
    assert not event_bus.is_connected
    event = TradeEvent.create_order_created(**ORDER)
    ns = names(env_config, event=event, event_bus=event_bus)
    run(ERROR_HANDLING, ns)
    out = capsys.readouterr().out
    assert out == "Cannot connect to Redis. Is the Docker container running?\nRedis connection lost\n"
    event_bus.close()


CONTEXT_MANAGER = """
with EventBusFactory.create_from_env(env_config) as event_bus:
    event = TradeEvent.create_order_created(symbol="XAUUSD", order_id="12345", order_type="BUY", price=2000.50, volume=0.1)
    event_bus.publish(event)
# Connection automatically closed
"""


def test_context_manager_snippet(settings, redis_client, key_prefix):
    ns = names(settings)
    run(CONTEXT_MANAGER, ns)
    assert redis_client.xlen(f"{key_prefix}:{{XAUUSD}}:log") == 1
    pool = ns["event_bus"].client.connection_pool
    assert not pool._in_use_connections and all(c._sock is None for c in pool._available_connections)


def test_connection_error_names_server_not_password(key_prefix):
    from bus.embedded import free_port

    port = free_port()
    cfg = LoadEnvironmentVariables(None, redis_url=f"redis://user:s3cr3t-pw@127.0.0.1:{port}/0", key_prefix=key_prefix)
    with pytest.raises(redis.ConnectionError) as info:
        EventBusFactory.create_from_env(cfg)
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "Is the Redis container running?" in msg
    assert "s3cr3t" not in msg and "s3cr3t" not in repr(info.value)
