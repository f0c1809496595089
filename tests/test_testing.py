"""bus.testing: the stub dispatcher routes like the real one and records; a refusing stub leaves the
event pending, as a down broker does."""

from __future__ import annotations

from bus import RedisEventBus, TradeEvent
from bus.core.dispatching import TaskDispatcher
from bus.dispatch.routing import Route
from bus.testing import StubDispatcher


def _as_protocol(d: TaskDispatcher[Route]) -> TaskDispatcher[Route]:
    return d  # mypy checks the stub against the bus's protocol here


def test_stub_records_the_routed_tasks_and_clears_pending(redis_url, key_prefix, redis_client) -> None:
    stub = StubDispatcher()
    with RedisEventBus(redis_url, key_prefix=key_prefix, dispatcher=_as_protocol(stub)) as bus:
        event = TradeEvent.create_order_created("STB", "o1", "BUY", 2000.5, 0.1)
        receipt = bus.publish(event)
    assert [(t.route, t.queue) for t in stub.sent] == [("state", "tradebus.state"), ("risk", "tradebus.risk")]
    assert {t.event.event_id for t in stub.sent} == {event.event_id}
    assert {t.log_id for t in stub.sent} == {receipt.log_id}
    assert receipt.dispatched == ("state", "risk")
    assert redis_client.zcard(f"{key_prefix}:{{STB}}:dispatch:pending") == 0


def test_stub_with_broker_down_leaves_the_event_pending(redis_url, key_prefix, redis_client) -> None:
    stub = StubDispatcher()
    stub.broker_down = True
    with RedisEventBus(redis_url, key_prefix=key_prefix, dispatcher=stub) as bus:
        receipt = bus.publish(TradeEvent.create_order_created("STB", "o2", "BUY", 2000.5, 0.1))
    assert stub.sent == []
    assert receipt.dispatched == () and receipt.not_dispatched == ("state", "risk")
    assert redis_client.zrange(f"{key_prefix}:{{STB}}:dispatch:pending", 0, -1) == [receipt.log_id]
