"""Custom event types: registered by a user's module, they validate, route, project and travel like the
built-ins; a worker configured only by its environment (TRADEBUS_EVENT_TYPES_MODULE) knows them too."""

from __future__ import annotations

import json
import queue
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import BaseModel

from bus import EventBusFactory, EventValidationError, RedisEventBus, RoutingError, TradeEvent, TradeEventType
from bus.config import Settings
from bus.core.wire import decode_entry
from bus.dispatch.routing import Route, RoutingTable
from bus.events import CustomEventType, register_event_type
from bus.events.registry import SPECS
from tests.helpers import wait_for

pytestmark = pytest.mark.usefixtures("custom_types")


def test_a_custom_type_is_an_event_type_wherever_one_is_accepted() -> None:
    funding = TradeEventType.parse("funding.rate_changed")
    assert isinstance(funding, CustomEventType) and funding.value == "funding.rate_changed"
    assert TradeEventType.parse("FUNDING_RATE_CHANGED") is funding and funding.name == "FUNDING_RATE_CHANGED"
    assert not funding.is_order and not funding.is_position
    assert len(TradeEventType) == 18 and "funding.rate_changed" not in {t.value for t in TradeEventType}
    event = TradeEvent.create(funding, "XAUUSD", rate=0.0001, correlation_id="c-1")
    assert event.event_type is funding and event.data == {"rate": 0.0001} and event.correlation_id == "c-1"
    same = {"event_id": "e-1", "timestamp": event.timestamp}
    by_name = TradeEvent.create("order.filled", "XAUUSD", order_id=7, fill_price=1.5, volume=1.0, **same)
    assert by_name == TradeEvent.create_order_filled("XAUUSD", 7, 1.5, 1.0, **same)  # type: ignore[arg-type]
    raw = event.encode()
    assert TradeEvent.from_json(raw) == event and TradeEvent.from_json(raw).encode() == raw
    trusted = decode_entry({b"type": b"funding.rate_changed", b"event": raw})
    assert trusted == event and trusted is not None and trusted.event_type is funding


@pytest.mark.parametrize(
    ("data", "field", "why"),
    [
        ({"rate": "high"}, "data.rate", "valid number"),
        ({}, "data.rate", "required for funding.rate_changed events"),
        ({"rate": None}, "data.rate", "required for funding.rate_changed events"),
        ({"rate": 0.1, "interval_hours": 0}, "data.interval_hours", "greater than 0"),
        ({"rate": 0.1, "price": -1}, "data.price", "must be > 0"),  # the standard rules, from Payload
        ({"rate": 0.1, "side": "up"}, "data.side", "must be one of BUY, SELL"),
    ],
)
def test_custom_payloads_are_validated_like_the_built_ins(data: dict[str, Any], field: str, why: str) -> None:
    with pytest.raises(EventValidationError) as err:
        TradeEvent.create("funding.rate_changed", "XAUUSD", **data)
    assert err.value.field == field and why in str(err.value)


def test_registration_rules() -> None:
    class Other(BaseModel):
        rate: float

    for name in ("order.expired", "risk.custom", "funding", "Funding.Rate", "a.b.c.d.e", "funding:rate", 7):
        with pytest.raises(EventValidationError):
            register_event_type(name, Other)  # type: ignore[arg-type]
    with pytest.raises(EventValidationError, match="already registered"):
        register_event_type("funding.rate_changed", Other)
    with pytest.raises(EventValidationError, match="pydantic model"):
        register_event_type("funding.other", dict)  # type: ignore[arg-type]
    assert "funding.other" not in SPECS


def test_routes_may_name_registered_types_and_the_state_route_takes_those_with_an_effect() -> None:
    table = RoutingTable.default().add(Route("funding", "user.task", "user", ("funding.*",)))
    funding = TradeEvent.create("funding.rate_changed", "XAUUSD", rate=0.1)
    halted = TradeEvent.create("market.halted", "XAUUSD", venue="X")
    assert [r.name for r in table.routes_for(funding)] == ["state", "funding"]
    assert [r.name for r in table.routes_for(halted)] == []
    with pytest.raises(RoutingError, match="matches no event type"):
        Route("nothing", "user.task", "user", ("nothing.*",))


def test_published_custom_events_are_logged_broadcast_and_projected_inline(settings: Settings) -> None:
    received: queue.Queue[TradeEvent] = queue.Queue()
    with RedisEventBus(settings=settings, apply_state=True) as bus:
        bus.subscribe("XAUUSD", "funding.rate_changed", received.put)
        handle = bus.listen_in_thread()
        assert bus.wait_until_listening(10)
        event = TradeEvent.create("funding.rate_changed", "XAUUSD", rate=-0.0002, interval_hours=4)
        bus.publish(event)
        assert received.get(timeout=10) == event
        assert [e for _, e in bus.read_log("XAUUSD")] == [event]
        funding = bus.client.hgetall(f"{settings.key_prefix}:{{XAUUSD}}:funding")
        assert funding == {b"rate": b"-0.0002", b"event_id": event.event_id.encode()}
        handle.stop()


@pytest.mark.celery
@pytest.mark.slow
def test_a_worker_configured_by_its_environment_routes_and_projects_custom_events(
    settings: Settings, tmp_path: Path, redis_url: str, subprocess_worker: Any, worker_log: Any
) -> None:
    # Given a routes file naming the custom type, and a worker whose only configuration is its environment
    routes = tmp_path / "routes.json"
    rule = {"name": "funding", "task": "tradebus_test.funding.record", "queue": "tradebus_test.custom",
            "event_types": ["funding.*"]}  # fmt: skip
    routes.write_text(json.dumps({"routes": [rule]}))
    env = {"TRADEBUS_EVENT_TYPES_MODULE": "tests.custom_event_types", "TRADEBUS_ROUTES_FILE": str(routes)}
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    publisher = settings.model_copy(
        update={"routes_file": str(routes), "event_types_module": "tests.custom_event_types"}
    )
    with subprocess_worker(settings, queues="tradebus.state,tradebus_test.custom", extra_env=env):
        # When a publisher built from the same settings publishes a funding event
        with EventBusFactory.create_from_env(publisher) as bus:
            receipt = bus.publish(TradeEvent.create("funding.rate_changed", "XAUUSD", rate=0.0003))
        # Then the user's task ran and the state task applied the user's effect
        assert receipt.dispatched == ("state", "funding")
        ran = wait_for(lambda: client.lrange(f"{settings.key_prefix}:test:funding", 0, -1), timeout=60,
                       what=f"the user's task\n{worker_log(settings)[-3000:]}")  # fmt: skip
        assert ran == ["funding|funding.rate_changed|0.0003"]
        key = f"{settings.key_prefix}:{{XAUUSD}}:funding"
        wait_for(lambda: client.hget(key, "rate") == "0.0003", timeout=60, what="the state effect")
    client.close()
