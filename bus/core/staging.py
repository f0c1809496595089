"""One event made ready for a publish script: validated, encoded, routed, its task messages staged.

Everything the publish scripts (publish.lua, publish_many.lua, publish_sequenced.lua) take for one event is
built here, once, for the blocking bus, the asyncio bus and the outbox's sequenced publish alike:

* the event's log, heads and pending-dispatch keys, its channel and type;
* its event routes (``dispatcher.routes_for``). With the broker a database of the bus's server
  (``dispatcher.stages_in_bus_pipeline``) the dispatcher stages their task messages on a
  ``StagedCommands`` recorder, and the script runs those commands itself right after the XADD: log,
  broadcast and task messages commit in the script's one call (at-least-once tasks), with no MULTI and
  no ``SCRIPT LOAD`` (a NOSCRIPT reply means nothing ran; the script is re-sent with EVAL). Otherwise the
  script records the event pending and the publisher sends the tasks after it;
* its log routes' wake flags (``waker.wake_for``), set in the same script (bus/core/wake.lua).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from bus.core.dispatching import LogRouteWaker, NamedRoute, TaskDispatcher, WakeArgs
from bus.core.keys import Keys, channel
from bus.core.scripts import LuaScript, StagedCommands
from bus.events.model import TradeEvent
from bus.events.types import EventType

#: the files of functions every publish script shares, loaded before it (Lua has no include)
PRELUDE = ("wake.lua", "log_event.lua")
PUBLISH = LuaScript("bus.core", "publish.lua", prelude=PRELUDE)
#: publish.lua for a run of consecutive same-symbol events in one call (publish_many)
PUBLISH_MANY = LuaScript("bus.core", "publish_many.lua", prelude=PRELUDE)

# publish.lua's ARGV: event JSON, channel, type, maxlen, tracked, staged word count, key prefix, staged words...
_JSON, _CHANNEL, _TYPE, _TRACKED, _STAGED_COUNT, _STAGED = 0, 1, 2, 4, 5, 7


@dataclass(frozen=True)
class PublishReceipt:
    event_id: str
    log_id: str
    subscribers: int
    dispatched: tuple[str, ...] = ()  # route names enqueued
    not_dispatched: tuple[str, ...] = ()  # route names the broker did not take (re-dispatched by beat)
    already_logged: bool = False  # a sequenced publish (bus/core/sequenced.py) found it logged: nothing sent


class Staged(NamedTuple):
    """One validated, encoded event and the arguments of its publish script."""

    event: TradeEvent
    payload: bytes  # the event JSON
    keys: list[str]  # publish.lua's KEYS: log, heads, pending dispatch of the symbol (+ wake flags)
    args: list[Any]  # publish.lua's ARGV (+ staged commands, + wake-up arguments)
    routes: Sequence[NamedRoute]  # its event routes (none without a dispatcher)
    wake: WakeArgs | None = None  # its log routes: their wake flags are part of keys and args
    staged: tuple[str, ...] = ()  # event routes whose task messages ride in the script (see module doc)
    after_commit: Sequence[Callable[[], object]] = ()  # the dispatcher's, once the script ran them

    @property
    def tracked(self) -> bool:
        """The script records a pending-dispatch entry (the tasks are sent after it)."""
        return self.args[_TRACKED][:1] == b"1"

    def run_args(self) -> list[Any]:
        """Its part of publish_many.lua's (and, after its number, publish_sequenced.lua's) ARGV: event JSON,
        channel, type, tracked ('' or '1'), the staged word count and the staged words."""
        a, n = self.args, self.args[_STAGED_COUNT]
        flag = a[_TRACKED] if a[_TRACKED] != b"0" else b""  # '' untracked and untraced (log_event.lua)
        return [a[_JSON], a[_CHANNEL], a[_TYPE], flag, n, *a[_STAGED : _STAGED + n]]


class Stager:
    """Builds ``Staged`` items for events published under ``keys`` (a Publisher owns one)."""

    def __init__(self, keys: Keys, log_maxlen: int, max_event_bytes: int, dispatcher: TaskDispatcher[Any] | None):
        self.keys, self.log_maxlen, self.max_event_bytes = keys, log_maxlen, max_event_bytes
        self.dispatcher = dispatcher
        self.waker = dispatcher if isinstance(dispatcher, LogRouteWaker) else None
        self._symbol_keys: dict[str, tuple[str, str, str]] = {}
        self._channels: dict[tuple[str, EventType], tuple[str, str]] = {}  # channel, type value

    def prepare(self, event: Any, traceparent: str | None = None) -> Staged:
        """Check, encode and route ``event``; nothing is staged yet (a batch is checked whole first).
        ``traceparent``: the publish span's context, carried in the log entry and the broadcast."""
        if not isinstance(event, TradeEvent):
            raise TypeError(f"publish() takes a TradeEvent, not {type(event).__name__}")
        payload = event.encode(self.max_event_bytes)
        d = self.dispatcher
        routes: Sequence[NamedRoute] = d.routes_for(event) if d is not None else ()
        tracked = bool(routes) and d is not None and not d.stages_in_bus_pipeline
        chan, type_value = self._channel_of(event)
        keys = list(self._keys_for(event.symbol))
        flag = b"1" if tracked else b"0"
        if traceparent:  # the flag, then the context (log_event.lua); none: byte-identical publish
            flag += traceparent.encode()
        args = [payload, chan, type_value, self.log_maxlen, flag, 0, self.keys.prefix]
        wake = self.waker.wake_for(event) if self.waker is not None else None
        if wake is not None:  # log routes: their wake flags are set in the same script (see wake.lua)
            keys += wake.keys
            args += wake.args
        return Staged(event, payload, keys, args, routes, wake)

    def stage(self, item: Staged) -> Staged:
        """Stage the task messages of ``item``'s event routes into its script arguments (a broker on the
        bus's server; ``before_task_publish`` fires now, ``after_task_publish`` from ``after_commit``)."""
        d = self.dispatcher
        if not item.routes or item.tracked or d is None:
            return item
        recorder, after_commit = StagedCommands(), list[Callable[[], object]]()
        names = d.stage(recorder, item.event, item.payload, item.routes, after_commit)
        words = recorder.words
        args = item.args
        args = [*args[:_STAGED_COUNT], len(words), args[_STAGED_COUNT + 1], *words, *args[_STAGED:]]
        return item._replace(args=args, staged=names, after_commit=after_commit)

    def _keys_for(self, symbol: str) -> tuple[str, str, str]:
        k = self._symbol_keys.get(symbol)
        if k is None:
            k = self._symbol_keys[symbol] = (
                self.keys.log(symbol),
                self.keys.heads(symbol),
                self.keys.pending_dispatch_for(symbol),
            )
        return k

    def _channel_of(self, event: TradeEvent) -> tuple[str, str]:
        found = self._channels.get((event.symbol, event.event_type))
        if found is None:
            t = event.event_type.value
            found = self._channels[(event.symbol, event.event_type)] = (channel(event.symbol, t), t)
        return found
