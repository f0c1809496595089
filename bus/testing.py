"""What users' own tests need: a real embedded Redis, and a dispatcher that records instead of
enqueueing (fast unit tests of code that publishes, without a broker or a worker).

    from bus import RedisEventBus
    from bus.testing import EmbeddedRedis, StubDispatcher

    with EmbeddedRedis() as redis_server:
        stub = StubDispatcher()
        with RedisEventBus(redis_server.url, dispatcher=stub) as bus:
            bus.publish(event)
        assert [t.route for t in stub.sent] == ["state", "risk"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from bus.core.dispatching import RouteNames
from bus.core.keys import Keys
from bus.dispatch.redispatch import forget_pending
from bus.dispatch.routing import Route, RoutingTable
from bus.embedded import EmbeddedRedis, free_port, redis_answers
from bus.events.model import TradeEvent

__all__ = ["EmbeddedRedis", "SentTask", "StubDispatcher", "free_port", "redis_answers"]


@dataclass(frozen=True)
class SentTask:
    """One task the stub would have enqueued."""

    event: TradeEvent
    route: str
    task: str
    queue: str
    log_id: str | None


class StubDispatcher:
    """Routes like the real dispatcher (the same RoutingTable) and records each task it would send.

    ``broker_down = True`` makes it refuse, as a dispatcher does whose broker is unreachable: the
    routes are reported in ``receipt.not_dispatched`` and the events stay pending for re-dispatch.
    """

    stages_in_bus_pipeline = False  # a separate broker: the publisher calls send_many after the log

    def __init__(self, routing: RoutingTable | None = None) -> None:
        self.routing = routing if routing is not None else RoutingTable.default()
        self.sent: list[SentTask] = []
        self.broker_down = False
        self._client: redis.Redis | None = None
        self._keys: Keys | None = None

    def attach(self, client: redis.Redis, keys: Keys) -> StubDispatcher:
        self._client, self._keys = client, keys
        return self

    def routes_for(self, event: TradeEvent) -> Sequence[Route]:
        return self.routing.routes_for(event)

    def stage(
        self, pipe: Any, event: TradeEvent, payload: bytes | str, routes: Sequence[Route], after_commit: Any = None
    ) -> tuple[str, ...]:
        raise AssertionError("StubDispatcher never stages in the bus's pipeline")

    def send_many(
        self, items: Sequence[tuple[TradeEvent, bytes | str, Sequence[Route]]], log_ids: Sequence[str | None]
    ) -> list[RouteNames]:
        names = [tuple(r.name for r in routes) for _, _, routes in items]
        if self.broker_down:
            return [((), n) for n in names]
        for (event, _, routes), log_id in zip(items, log_ids, strict=True):
            self.sent.extend(SentTask(event, r.name, r.task, r.queue, log_id) for r in routes)
        if self._client is not None and self._keys is not None:  # enqueued: no longer pending re-dispatch
            forget_pending(self._client, self._keys, items, log_ids)
        return [(n, ()) for n in names]
