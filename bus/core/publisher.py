"""Publishing: one atomic round trip per event (or per batch), and the dispatch hook.

The dispatch protocol is documented in bus/redis_bus.py's module docstring.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from bus.core import state
from bus.core.keys import Keys, channel
from bus.core.scripts import LuaScript, execute_pipeline
from bus.errors import BusConnectionError, DispatchError
from bus.events.model import TradeEvent, TradeEventType

log = logging.getLogger(__name__)

PUBLISH = LuaScript("publish.lua")
#: publish.lua for a run of consecutive same-symbol events in one call (publish_many)
PUBLISH_MANY = LuaScript("publish_many.lua")
#: most events one publish_many.lua call takes (bounds how long one script holds the server)
PUBLISH_RUN_MAX = 100


@dataclass(frozen=True)
class PublishReceipt:
    event_id: str
    log_id: str
    subscribers: int
    dispatched: tuple[str, ...] = ()  # route names enqueued
    not_dispatched: tuple[str, ...] = ()  # route names the broker did not take (re-dispatched by beat)


class Publisher:
    """Mixin of RedisEventBus: needs client, keys, log_maxlen, max_event_bytes, apply_state, dispatcher."""

    client: redis.Redis
    keys: Keys
    log_maxlen: int
    max_event_bytes: int
    apply_state: bool
    state_retention: int
    dispatcher: Any
    _symbol_keys: dict[str, tuple[str, str, str]]
    _routes_cache: dict[tuple[str, TradeEventType], tuple[str, str]]
    _symbols_sent: set[str]
    #: events per publish_many.lua call; 1 publishes every event with its own publish.lua call
    publish_run_max: int = PUBLISH_RUN_MAX

    def _connection_error(self, e: Exception) -> BusConnectionError:  # pragma: no cover - overridden
        raise NotImplementedError

    # --- publish ----------------------------------------------------------------------------------

    def _keys_for(self, symbol: str) -> tuple[str, str, str]:
        k = self._symbol_keys.get(symbol)
        if k is None:
            k = self._symbol_keys[symbol] = (
                self.keys.log(symbol),
                self.keys.heads(symbol),
                self.keys.pending_dispatch_for(symbol),
            )
        return k

    def _prepare(self, event: Any) -> tuple[bytes, list[Any], list[Any], Sequence[Any]]:
        if not isinstance(event, TradeEvent):
            raise TypeError(f"publish() takes a TradeEvent, not {type(event).__name__}")
        payload = event.encode(self.max_event_bytes)
        routes: Sequence[Any] = self.dispatcher.routes_for(event) if self.dispatcher is not None else ()
        route = self._routes_cache.get((event.symbol, event.event_type))
        if route is None:
            t = event.event_type.value
            route = self._routes_cache[(event.symbol, event.event_type)] = (
                channel(event.symbol, t),
                t,
            )
        if routes and not self.dispatcher.stages_in_bus_pipeline:
            args = [
                payload,
                route[0],
                route[1],
                self.log_maxlen,
                b"1",
                0,  # unused: the pending entry is scored with the server time of its log id
                self.keys.prefix,
            ]
        else:
            args = [payload, route[0], route[1], self.log_maxlen, b"0", 0, self.keys.prefix]
        return payload, list(self._keys_for(event.symbol)), args, routes

    def publish(self, event: TradeEvent) -> PublishReceipt:
        """Log + broadcast ``event`` atomically in one round trip (plus routed tasks, see module doc)."""
        payload, keys, args, routes = self._prepare(event)
        staged = bool(routes) and self.dispatcher.stages_in_bus_pipeline
        try:
            if not staged and not self.apply_state and event.symbol in self._symbols_sent:
                log_id, n = PUBLISH.call(self.client, keys, args)
                names: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
            else:
                (log_id, n), names = self._publish_pipeline([(event, payload, keys, args, routes)])[0]
            log_id = log_id.decode()
            if routes and not staged:
                names = self._send([(event, payload, routes)], [log_id])[0]
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise self._connection_error(e) from None
        return PublishReceipt(event.event_id, log_id, int(n), names[0], names[1])

    def publish_many(self, events: Iterable[TradeEvent]) -> list[PublishReceipt]:
        """Publish a batch in one pipeline (one round trip). Nothing is sent if any event is invalid."""
        prepared = [(e, *self._prepare(e)) for e in events]
        if not prepared:
            return []
        try:
            results = self._publish_pipeline(prepared)
            receipts: list[PublishReceipt] = []
            to_send = [(i, e, p, r) for i, (e, p, _, _, r) in enumerate(prepared)
                       if r and not self.dispatcher.stages_in_bus_pipeline]  # fmt: skip
            sent: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}
            if to_send:
                outcome = self._send([(e, p, r) for _, e, p, r in to_send],
                                     [results[i][0][0].decode() for i, *_ in to_send])  # fmt: skip
                sent = {i: o for (i, *_), o in zip(to_send, outcome, strict=True)}
            for i, (event, *_rest) in enumerate(prepared):
                (log_id, n), names = results[i]
                names = sent.get(i, names)
                receipts.append(PublishReceipt(event.event_id, log_id.decode(), int(n), names[0], names[1]))
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise self._connection_error(e) from None
        return receipts

    def _runs(self, batch: list[Any]) -> list[tuple[int, int]]:
        """[start, end) ranges of consecutive same-symbol events, at most ``publish_run_max`` long."""
        runs, i, n, cap = [], 0, len(batch), max(1, self.publish_run_max)
        while i < n:
            symbol, j = batch[i][0].symbol, i + 1
            while j < n and j - i < cap and batch[j][0].symbol == symbol:
                j += 1
            runs.append((i, j))
            i = j
        return runs

    def _publish_pipeline(self, batch: list[Any]) -> list[tuple[list[Any], tuple[tuple[str, ...], tuple[str, ...]]]]:
        """One pipeline for the batch; MULTI when the dispatcher stages task messages in it.

        A batch is one publish_many.lua call per run of consecutive same-symbol events (at most
        ``publish_run_max``), in batch order, so it keeps its order per symbol and across symbols.
        When every run is one event long (a single publish, alternating symbols, or
        ``publish_run_max = 1``: the pre-batching behaviour) each event is one publish.lua call."""
        staged_any = self.dispatcher is not None and self.dispatcher.stages_in_bus_pipeline and any(b[4] for b in batch)
        runs = self._runs(batch)
        # One publish script per pipeline: after a script-cache loss every call fails with NOSCRIPT
        # and execute_pipeline re-runs them all, in order (two scripts could half succeed). Runs of
        # one event only (a single publish, symbols alternating) keep the cheaper publish.lua.
        many = len(runs) < len(batch)
        pipe = self.client.pipeline(transaction=staged_any)
        scripts: tuple[LuaScript, ...] = (PUBLISH_MANY,) if many else (PUBLISH,)
        if self.apply_state:
            scripts += (state.SCRIPT,)
        if staged_any:  # a NOSCRIPT inside MULTI would let the task messages go out without the log
            for s in scripts:
                s.load(pipe)
        new_symbols = {b[0].symbol for b in batch} - self._symbols_sent
        if new_symbols:
            pipe.sadd(self.keys.symbols(), *sorted(new_symbols))
        slots: list[tuple[int, int, tuple[str, ...]]] = []  # (command, pair in its reply, staged)
        for i, j in runs:
            if not many:
                _, _, keys, args, _ = batch[i]
                PUBLISH.stage(pipe, keys, args)
            else:
                margs: list[Any] = [self.log_maxlen, self.keys.prefix]
                for _, _, _, args, _ in batch[i:j]:
                    margs += (args[0], args[1], args[2], b"1" if args[4] == b"1" else b"")
                PUBLISH_MANY.stage(pipe, batch[i][2], margs)
            at = len(pipe.command_stack) - 1
            for k, (event, payload, _, _, routes) in enumerate(batch[i:j]):
                if self.apply_state:
                    state.stage_apply(pipe, self.keys, event, retention=self.state_retention)
                staged: tuple[str, ...] = ()
                if routes and self.dispatcher.stages_in_bus_pipeline:
                    staged = tuple(self.dispatcher.stage(pipe, event, payload, routes) or ())
                slots.append((at, k if many else -1, staged))
        results = execute_pipeline(pipe, scripts)
        for r in results:
            if isinstance(r, (redis.ConnectionError, redis.TimeoutError)):
                raise r
        out: list[tuple[list[Any], tuple[tuple[str, ...], tuple[str, ...]]]] = []
        for at, k, staged in slots:
            res = results[at]
            if isinstance(res, Exception):
                raise res
            out.append((res if k < 0 else res[2 * k : 2 * k + 2], (staged, ())))
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:  # state or staged dispatch failed after the event was logged: report, do not lose it
            log.error("publish pipeline: %d command(s) failed after logging: %s", len(failed), failed[0])
            if staged_any:
                out = [(res, ((), staged)) for res, (staged, _) in out]
        self._symbols_sent |= new_symbols
        return out

    def _send(self, items: list[Any], log_ids: list[str]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        d = self.dispatcher
        try:
            if len(items) == 1 or not hasattr(d, "send_many"):
                return [tuple(d.send(e, p, r, lid)) for (e, p, r), lid in zip(items, log_ids, strict=True)]  # type: ignore[misc]
            return list(d.send_many(items, log_ids))
        except DispatchError:
            raise
        except Exception:  # noqa: BLE001 - the event is logged; beat re-dispatches what stays pending
            log.exception("dispatch failed; %d event(s) left pending for re-dispatch", len(items))
            return [((), tuple(x.name for x in r)) for _, _, r in items]
