"""Log-route effects: what a drain does with a batch, registered by name (the route's ``task``).

An effect is a plain function ``effect(batch)``. It stages its Redis writes on ``batch.tx`` (a MULTI
pipeline): they commit in one transaction with the acknowledgement of the batch's entries, so each
entry's effect happens exactly once, without idempotency records. Reads go through ``batch.client`` and
see the state before this batch. An effect that publishes events calls ``batch.publish(event)``: the
event is logged, broadcast and routed in the same transaction. An exception fails the batch (nothing of
it commits) and the drain retries it entry by entry with the route's backoff.

Writes outside Redis cannot join the transaction: such effects run at least once (a drainer can die
after them and before the commit) and can use ``entry.log_id`` to recognise a repeat.

    from bus.dispatch.logroutes.effects import register_effect

    @register_effect("myapp.audit")          # route: {"name": "audit", "task": "myapp.audit", "mode": "log", ...}
    def audit(batch):
        for entry in batch.entries:
            batch.tx.rpush(f"audit:{{{batch.symbol}}}", entry.payload)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from bus.core import state
from bus.core.keys import Keys
from bus.core.scripts import LuaScript
from bus.defaults import DEFAULT_STATE_RETENTION
from bus.dispatch.names import RISK_TASK, STATE_TASK
from bus.dispatch.routing import Route
from bus.errors import BusError
from bus.events.model import TradeEvent

#: the built-in effects' names: the ``task`` of the default state and risk routes
STATE_EFFECT, RISK_EFFECT = STATE_TASK, RISK_TASK


class LogRouteError(BusError):
    """A log route cannot be drained as configured (no effect registered under its ``task``)."""


@dataclass(frozen=True)
class LogEntry:
    log_id: str
    event: TradeEvent
    payload: bytes  # the event JSON as logged


class StagesPublish(Protocol):
    """A bus that can stage a publish on a transaction (RedisEventBus): ``hooks`` get the EXEC results."""

    def stage_publish(self, pipe: Any, event: TradeEvent, hooks: list[Callable[[list[Any]], None]]) -> None: ...


@dataclass
class Batch:
    """One transaction's worth of a route's entries of one symbol, in log order."""

    route: Route
    symbol: str
    entries: list[LogEntry]
    client: redis.Redis
    keys: Keys
    tx: Any  # redis-py Pipeline in MULTI mode
    context: Any = None  # what the runner passes (the worker's per-process context)
    publisher: StagesPublish | None = None
    hooks: list[Callable[[list[Any]], None]] = field(default_factory=list)
    _loaded: set[str] = field(default_factory=set)

    def load(self, script: LuaScript) -> None:
        """Queue SCRIPT LOAD before the first EVALSHA of ``script`` in this transaction: a NOSCRIPT inside
        MULTI would fail that command alone and let the acknowledgements commit without it."""
        if script.sha not in self._loaded:
            script.load(self.tx)
            self._loaded.add(script.sha)

    def publish(self, event: TradeEvent) -> None:
        """Publish ``event`` when (and only if) this batch commits: logged, broadcast, routed."""
        if self.publisher is None:
            raise LogRouteError(f"route {self.route.name!r}: this drain was given no bus to publish with")
        self.publisher.stage_publish(self.tx, event, self.hooks)

    def after_commit(self, hook: Callable[[list[Any]], None]) -> None:
        """Run ``hook(exec_results)`` once the transaction has committed (not if it did not)."""
        self.hooks.append(hook)


Effect = Callable[[Batch], None]
_EFFECTS: dict[str, Effect] = {}
_REPLAYABLE: set[str] = set()


def register_effect(name: str, effect: Effect | None = None, *, replayable: bool = False) -> Any:
    """Register ``effect`` for log routes whose ``task`` is ``name`` (usable as a decorator).

    ``replayable``: applying an entry again is harmless (``tradebus replay --log-route`` re-applies a
    range); left False, a replay of the route is refused."""

    def add(fn: Effect) -> Effect:
        _EFFECTS[name] = fn
        (_REPLAYABLE.add if replayable else _REPLAYABLE.discard)(name)
        return fn

    return add(effect) if effect is not None else add


def is_replayable(route: Route) -> bool:
    return route.task in _REPLAYABLE


def is_registered(route: Route) -> bool:
    """Whether this process knows the route's effect (a worker may know more: its --include modules)."""
    return route.task in _EFFECTS


def effect_for(route: Route) -> Effect:
    try:
        return _EFFECTS[route.task]
    except KeyError:
        raise LogRouteError(
            f"log route {route.name!r}: no effect registered under {route.task!r} "
            f"(known: {sorted(_EFFECTS)}); register one with bus.dispatch.logroutes.effects.register_effect"
        ) from None


@register_effect(STATE_EFFECT, replayable=True)
def project_state(batch: Batch) -> None:
    """The state projection (bus/core/state.lua), one call per order/position event, in log order, as the
    state task applies it (``retention`` from the worker's settings; ``now``: a drain may apply an entry
    long after its publish). Replayable: the projection is idempotent per event and monotonic per entity."""
    settings = getattr(batch.context, "settings", None)
    retention = settings.state_retention if settings is not None else DEFAULT_STATE_RETENTION
    batch.load(state.SCRIPT)
    now = time.time()
    for entry in batch.entries:
        state.stage_apply(batch.tx, batch.keys, entry.event, retention=retention, now=now)
