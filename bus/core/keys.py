"""Every channel, pattern and Redis key name tradebus uses, in one place.

Keys of one symbol share the hash tag ``{SYMBOL}`` so that its log, state hashes and indexes live in
one Redis Cluster slot and one Lua script may touch them together.
"""

from __future__ import annotations

import re

from bus.defaults import CHANNEL_PREFIX, DEFAULT_KEY_PREFIX
from bus.errors import EventValidationError
from bus.events.types import TradeEventType

# Key prefixes also travel inside every broadcast's JSON (publish.lua), so they stay plain.
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")


def _type_value(event_type: TradeEventType | str) -> str:
    return getattr(event_type, "value", event_type)  # type: ignore[return-value]


# --- pub/sub -------------------------------------------------------------------------------------


def channel(symbol: str, event_type: TradeEventType | str) -> str:
    """``trades:XAUUSD:order.created``"""
    return f"{CHANNEL_PREFIX}:{symbol}:{_type_value(event_type)}"


def symbol_pattern(symbol: str) -> str:
    """Every event type of one symbol."""
    return f"{CHANNEL_PREFIX}:{symbol}:*"


def type_pattern(event_type: TradeEventType | str) -> str:
    """One event type across every symbol."""
    return f"{CHANNEL_PREFIX}:*:{_type_value(event_type)}"


ALL_PATTERN = f"{CHANNEL_PREFIX}:*"


def parse_channel(name: str) -> tuple[str, str]:
    """``trades:XAUUSD:order.created`` -> ``("XAUUSD", "order.created")``; ValueError otherwise."""
    prefix, _, rest = name.partition(":")
    symbol, _, type_value = rest.partition(":")
    if prefix != CHANNEL_PREFIX or not symbol or not type_value:
        raise ValueError(f"not a tradebus channel: {name!r}")
    return symbol, type_value


# --- Redis keys ----------------------------------------------------------------------------------


class Keys:
    """Key names under one prefix. Per-symbol keys carry the ``{symbol}`` hash tag."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = DEFAULT_KEY_PREFIX) -> None:
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise EventValidationError(
                f"key prefix {prefix!r} is not usable: 1-128 of letters, digits and '_.:-', starting with a "
                "letter or digit",
                field="key_prefix",
                value=prefix,
            )
        self.prefix = prefix

    def _sym(self, symbol: str) -> str:
        return f"{self.prefix}:{{{symbol}}}"

    # per symbol (one cluster slot)
    def log(self, symbol: str) -> str:
        """Stream: the durable event log of one symbol."""
        return f"{self._sym(symbol)}:log"

    def heads(self, symbol: str) -> str:
        """Hash: last log id per event type ('_' for any type), for subscriber gap detection."""
        return f"{self._sym(symbol)}:heads"

    def order(self, symbol: str, order_id: str) -> str:
        return f"{self._sym(symbol)}:order:{order_id}"

    def position(self, symbol: str, position_id: str) -> str:
        return f"{self._sym(symbol)}:position:{position_id}"

    def open_orders(self, symbol: str) -> str:
        """Set of order ids not yet filled, cancelled or rejected."""
        return f"{self._sym(symbol)}:orders:open"

    def active_positions(self, symbol: str) -> str:
        """Set of position ids not yet closed."""
        return f"{self._sym(symbol)}:positions:active"

    def seen(self, symbol: str, kind: str, entity_id: str) -> str:
        """Sorted set: ids of the last events applied to one order/position (idempotency window; score:
        event time in µs) and a floor marker below which every event counts as applied (bus.core.state)."""
        return f"{self._sym(symbol)}:seen:{kind}:{entity_id}"

    def pending_dispatch_for(self, symbol: str) -> str:
        """Sorted set: log ids of ``symbol`` whose routed tasks are not yet recorded as enqueued
        (score: ms time of publish). The bus adds them; beat re-dispatches the stale ones."""
        return f"{self._sym(symbol)}:dispatch:pending"

    def outbox_mark(self, symbol: str, source: str) -> str:
        """String 'origin|seq|log_id': the highest outbox sequence number of ``source`` logged for
        ``symbol`` (publish_sequenced.lua: a resent outbox row is not logged twice). One per (source, symbol)."""
        return f"{self._sym(symbol)}:outbox:{source}"

    def risk(self, symbol: str) -> str:
        """Hash: per-symbol risk counters."""
        return f"{self._sym(symbol)}:risk"

    # what a log route's drain writes besides state: in the symbol's slot, so its one transaction (effects +
    # XACK) stays in one Redis Cluster slot; readers merge them with the global keys below
    def symbol_dead_letters(self, symbol: str) -> str:
        """Stream: the dead letters of ``symbol``'s log routes (entries they could not apply)."""
        return f"{self._sym(symbol)}:deadletters"

    def symbol_daily_loss(self, symbol: str, day: str) -> str:
        """Hash: realised pnl of ``symbol`` on ``day`` recorded by the risk log route (field ``total``)."""
        return f"{self._sym(symbol)}:risk:loss:{day}"

    # log routes (bus/dispatch/logroutes): the log's consumer group per route is named after the route
    def wake_flag(self, route: str, symbol: str) -> str:
        """String with a TTL: a wake-up task for (route, symbol) is on its way or a drainer is at work."""
        return f"{self._sym(symbol)}:wake:{route}"

    def wake_messages(self, symbol: str) -> str:
        """Hash: the wake-up task message of each (log route, message version) of ``symbol``, stored once so
        publishes name it instead of sending it."""
        return f"{self._sym(symbol)}:wake-messages"

    def drain_lease(self, route: str, symbol: str) -> str:
        """String with a TTL: the token of the one drainer of (route, symbol)."""
        return f"{self._sym(symbol)}:drain:{route}"

    # global
    def symbols(self) -> str:
        """Set of every symbol that has a log."""
        return f"{self.prefix}:symbols"

    def pending_dispatch(self) -> str:
        """Sorted set: 'symbol|log_id|event_id' logged but whose tasks are not yet recorded as enqueued."""
        return f"{self.prefix}:dispatch:pending"

    def dead_letters(self) -> str:
        """Stream: tasks that failed past their retries, and malformed messages."""
        return f"{self.prefix}:deadletters"

    def breach(self, rule: str, event_id: str) -> str:
        """String: marker of a risk breach already raised for (rule, event); expires after the retention."""
        return f"{self.prefix}:risk:breach:{rule}|{event_id}"

    def daily_loss(self, day: str) -> str:
        return f"{self.prefix}:risk:loss:{day}"

    def lease(self, name: str) -> str:
        return f"{self.prefix}:lease:{name}"

    def fence(self, name: str) -> str:
        return f"{self.prefix}:fence:{name}"

    def stats(self) -> str:
        """Hash of counters (tasks run, retried, dead-lettered...) the CLI reports."""
        return f"{self.prefix}:stats"

    def kill_switch(self) -> str:
        """Hash: symbol -> reason, set when the executor must refuse new orders."""
        return f"{self.prefix}:killswitch"

    # risk, notify, reconcile
    def symbol_fence(self, symbol: str) -> str:
        """String: highest reconciliation fencing token that wrote to this symbol's keys."""
        return f"{self._sym(symbol)}:fence"

    def notified(self, event_id: str) -> str:
        """Hash: sink name -> 'ok' / 'failed' for one event (a retry does not resend what was delivered)."""
        return f"{self.prefix}:notified:{event_id}"

    def stale_orders(self) -> str:
        """Hash: 'symbol|order_id' -> JSON of pending orders older than the configured age."""
        return f"{self.prefix}:{{reconcile}}:stale_orders"

    def reconcile_runs(self) -> str:
        """Hash: job name -> JSON of its last effective run (time, fencing token, summary)."""
        return f"{self.prefix}:{{reconcile}}:runs"

    def job_fence(self) -> str:
        """String: highest fencing token that wrote reconciliation's global keys (same slot as them)."""
        return f"{self.prefix}:{{reconcile}}:fence"

    def scratch(self, run_id: str) -> Keys:
        """Keys for a throw-away projection rebuilt by reconciliation (same hash tags per symbol)."""
        return Keys(f"{self.prefix}:scratch:{run_id}")

    # task bookkeeping
    def deliveries(self, task_id: str) -> str:
        """Counter: redeliveries of one task message (poison-message cap)."""
        return f"{self.prefix}:deliveries:{task_id}"
