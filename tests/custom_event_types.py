"""A user's custom event types, as TRADEBUS_EVENT_TYPES_MODULE names them: ``funding.rate_changed`` with
a state effect and a task of its own, and ``market.halted`` with neither. Importing registers them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from bus.events import Payload, register_event_type
from bus.events.registry import unregister_event_type
from celery_app import routed_task

FUNDING = "funding.rate_changed"
HALTED = "market.halted"


class FundingRateChanged(Payload):
    """The funding rate of a perpetual changed."""

    rate: Annotated[float, Field(strict=True, allow_inf_nan=False, description="Per interval, e.g. 0.0001.")]
    interval_hours: Annotated[int, Field(strict=True, gt=0)] = 8


class MarketHalted(Payload):
    """Trading on a venue stopped."""

    venue: str


def funding_key(prefix: str, symbol: str) -> str:
    return f"{prefix}:{{{symbol}}}:funding"


def apply_funding(pipe: Any, keys: Any, event: Any) -> None:
    """The state effect: the latest rate per symbol (HSET of absolute values: idempotent)."""
    pipe.hset(funding_key(keys.prefix, event.symbol), mapping={"rate": repr(event.data["rate"]),
                                                                "event_id": event.event_id})  # fmt: skip


@routed_task(name="tradebus_test.funding.record")
def record_funding(self: Any, event_json: str, route: str = "") -> None:
    """The user's own task for funding events: records 'route|type|rate'."""
    ev = self.event
    self.ctx.client.rpush(f"{self.ctx.keys.prefix}:test:funding", f"{route}|{ev.event_type.value}|{ev.data['rate']}")


def register() -> None:
    register_event_type(FUNDING, FundingRateChanged, effect=apply_funding)
    register_event_type(HALTED, MarketHalted)


def unregister() -> None:
    for name in (FUNDING, HALTED):
        unregister_event_type(name)


register()
