"""The state projection: order and position events -> Redis hashes, one atomic Lua step per event.

Used inline by ``RedisEventBus(apply_state=True)`` (``StateEffect``, staged in the publish pipeline,
also by the sequenced publish), by the Celery state task and by rebuild; all call the same script, so
all produce identical hashes. Guarantees (effectively-once effects):

* idempotent: each entity remembers the ids of its last ``WINDOW`` applied events (a sorted set scored
  by event time) and a floor, the newest time it forgot; a repeat, or any event at or below the floor,
  changes nothing. Memory per entity is bounded whatever its number of events;
* monotonic: ``pending -> partially_filled -> filled``; ``cancelled``/``rejected`` are terminal too;
  ``active -> closed``. A late or out-of-order event never moves an entity backwards, but may fill
  in fields still missing (``order.created`` arriving after ``order.filled`` adds the price);
* exact: partial fills / partial closes are summed in integer units of 1e-8 inside Lua and stored as
  decimal strings (``'0.3'``, never ``'0.30000000000000004'``);
* bounded: once an entity is terminal (filled, cancelled, rejected; closed) its hash and idempotency
  window expire ``retention`` seconds after the last event applied to it (0 keeps them forever); it
  left its open/active index in the same step, so queries then know it no more than an unknown one.

Late events after expiry. Every event applied to an expired entity is older than the retention window
(the expiry counts from the last one applied). A worker applying an event passes ``now``: an event older
than ``now - retention`` then never *creates* an entity — a late ``order.created`` (a dead-letter
replay, a re-dispatch after a long outage) would otherwise bring a filled order back as pending, listed
in the open orders and never expiring. Such an event still updates an entity that exists. The cost: an
entity whose first event reaches the worker more than ``retention`` after its timestamp (an event
stamped by a clock that far behind, a backfill of old orders) is not projected by the worker; the log
keeps it and rebuild (bus.domain.rebuild, replaying with ``now=None``) restores it. The publish-time
projection passes no ``now``: an event being logged is never late.

Hashes hold strings only: ``{'order_id': '12345', 'status': 'pending', 'price': '2000.5', ...}``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import orjson
import redis

from bus.core.keys import Keys
from bus.core.scripts import LuaScript
from bus.core.steps import Command, Execute, Steps, run
from bus.core.wire import text
from bus.defaults import DEFAULT_STATE_RETENTION
from bus.events.model import PRICE_FIELDS, VOLUME_FIELDS, TradeEvent
from bus.events.registry import SPECS, CustomEffect

SCRIPT = LuaScript("bus.core", "state.lua")
#: what the script returns
DUPLICATE, APPLIED, REFUSED_LATE = 0, 1, 2
#: event ids remembered per entity (state.lua's WINDOW): its sorted set stays a compact listpack
WINDOW = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EXACT_FIELDS = VOLUME_FIELDS | {"pnl"}
_QUANTUM = Decimal("0.00000001")


def _decimal_text(value: float | int, exact: bool) -> str:
    if isinstance(value, int):
        return int.__repr__(value)
    # repr is the shortest text that reads back as the same float: already the decimal we store,
    # unless it has an exponent or an exact amount has more than 8 decimals (Decimal is ~10x slower)
    shortest = float.__repr__(value)
    if "." in shortest and "e" not in shortest and not (exact and len(shortest) - shortest.index(".") > 9):
        return shortest
    d = Decimal(shortest)
    if exact and d.as_tuple().exponent < -8:  # type: ignore[operator]
        d = d.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN).normalize()
    return format(d, "f")


def _text(field: str, value: Any) -> str:
    """A data value as the hash stores it: strings as is, numbers as exact decimals, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _decimal_text(value, field in _EXACT_FIELDS or field in PRICE_FIELDS)
    return orjson.dumps(value).decode()


def _entity(event: TradeEvent) -> tuple[str, str] | None:
    t = event.event_type
    if t.is_order:
        return "order", str(event.data["order_id"])
    if t.is_position:
        return "position", str(event.data["position_id"])
    return None


def _event_us(timestamp: str) -> int:
    """Microseconds since the epoch, exactly (a float would round)."""
    t = datetime.fromisoformat(timestamp)
    delta = (t if t.tzinfo else t.replace(tzinfo=UTC)) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _call(keys: Keys, event: TradeEvent, retention: int, now: float | None) -> tuple[list[str], list[Any]] | None:
    entity = _entity(event)
    if entity is None:
        return None
    kind, entity_id = entity
    symbol = event.symbol
    if kind == "order":
        hash_key, index = keys.order(symbol, entity_id), keys.open_orders(symbol)
    else:
        hash_key, index = keys.position(symbol, entity_id), keys.active_positions(symbol)
    event_us = _event_us(event.timestamp)
    may_create = now is None or retention == 0 or event_us >= (now - retention) * 1_000_000
    args: list[Any] = [event.event_id, event.event_type.value, event.timestamp, kind, entity_id, symbol]
    args += (event_us, retention, "1" if may_create else "0")
    for field, value in event.data.items():
        if value is not None:
            args += (field, _text(field, value))
    return [hash_key, keys.seen(symbol, kind, entity_id), index], args


def _effect(event: TradeEvent) -> CustomEffect | None:
    """The state effect a custom event type was registered with (bus.events.register_event_type)."""
    return SPECS[event.event_type.value].effect


def is_entity_event(event: TradeEvent) -> bool:
    """True for order.* and position.* events: state.lua's reply is APPLIED, DUPLICATE or REFUSED_LATE
    (a custom effect's first reply is its own)."""
    return _entity(event) is not None


def is_state_event(event: TradeEvent) -> bool:
    """True for order.* and position.* events, and custom types with a state effect."""
    return _entity(event) is not None or _effect(event) is not None


def apply_event(
    client: redis.Redis,
    keys: Keys,
    event: TradeEvent,
    *,
    retention: int = DEFAULT_STATE_RETENTION,
    now: float | None = None,
) -> bool:
    """Apply one event; True if it was applied now, False if it was a duplicate, refused as too late
    to create its entity (``now`` given, see above) or not a state event. ``retention``: seconds a
    terminal entity is kept (0: forever); ``now``: epoch seconds of a late application (a worker)."""
    call = _call(keys, event, retention, now)
    if call is None:
        effect = _effect(event)
        if effect is None:
            return False
        pipe = client.pipeline(transaction=True)
        effect(pipe, keys, event)
        pipe.execute()
        return True
    return bool(SCRIPT.call(client, *call) == APPLIED)


def stage_apply(
    pipe: Any,
    keys: Keys,
    event: TradeEvent,
    *,
    retention: int = DEFAULT_STATE_RETENTION,
    now: float | None = None,
) -> bool:
    """Queue the same step on a pipeline (its reply: APPLIED, DUPLICATE or REFUSED_LATE); returns
    whether a command was queued."""
    call = _call(keys, event, retention, now)
    if call is None:
        effect = _effect(event)
        if effect is None:
            return False
        effect(pipe, keys, event)
        return True
    SCRIPT.stage(pipe, *call)
    return True


class StateEffect:
    """The projection as an inline effect of publish: each order/position event is applied in the
    publish pipeline, right after it is logged (``RedisEventBus(apply_state=True)``). No ``now``: an
    event being logged is never late. ``retention``: seconds a terminal entity is kept (0: forever)."""

    scripts = (SCRIPT,)

    def __init__(self, keys: Keys, retention: int = DEFAULT_STATE_RETENTION) -> None:
        self.keys = keys
        self.retention = retention

    def stage(self, pipe: Any, event: TradeEvent) -> bool:
        return stage_apply(pipe, self.keys, event, retention=self.retention)


# --- queries -------------------------------------------------------------------------------------


def _decode(raw: dict[bytes | str, bytes | str]) -> dict[str, str] | None:
    if not raw:
        return None
    return {text(k): text(v) for k, v in raw.items()}


def get_order(client: redis.Redis, keys: Keys, symbol: str, order_id: str) -> dict[str, str] | None:
    return run(client, order_steps(keys, symbol, order_id))


def get_position(client: redis.Redis, keys: Keys, symbol: str, position_id: str) -> dict[str, str] | None:
    return run(client, position_steps(keys, symbol, position_id))


def open_orders(client: redis.Redis, keys: Keys, symbol: str) -> list[dict[str, str]]:
    """Orders of ``symbol`` still pending or partially filled, by order id."""
    return run(client, open_orders_steps(client, keys, symbol))


def active_positions(client: redis.Redis, keys: Keys, symbol: str) -> list[dict[str, str]]:
    """Positions of ``symbol`` not yet closed, by position id."""
    return run(client, active_positions_steps(client, keys, symbol))


# the queries as steps (bus/core/steps.py), run by the blocking functions above and by bus.aio;
# ``client`` only makes the pipeline (a redis-py or a redis.asyncio one)


def order_steps(keys: Keys, symbol: str, order_id: str) -> Steps[dict[str, str] | None]:
    return _decode((yield Command(("HGETALL", keys.order(symbol, str(order_id))))))


def position_steps(keys: Keys, symbol: str, position_id: str) -> Steps[dict[str, str] | None]:
    return _decode((yield Command(("HGETALL", keys.position(symbol, str(position_id))))))


def open_orders_steps(client: Any, keys: Keys, symbol: str) -> Steps[list[dict[str, str]]]:
    return (yield from _members(client, keys.open_orders(symbol), lambda i: keys.order(symbol, i)))


def active_positions_steps(client: Any, keys: Keys, symbol: str) -> Steps[list[dict[str, str]]]:
    return (yield from _members(client, keys.active_positions(symbol), lambda i: keys.position(symbol, i)))


def _members(client: Any, index: str, key_of: Any) -> Steps[list[dict[str, str]]]:
    ids = sorted(text(m) for m in (yield Command(("SMEMBERS", index))))
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for entity_id in ids:
        pipe.hgetall(key_of(entity_id))
    replies = yield Execute(pipe)
    for r in replies:
        if isinstance(r, Exception):
            raise r
    return [d for d in map(_decode, replies) if d is not None]
