"""Log-route effects only tests use (imported in-process, or ``--include tests.logroute_effects`` by workers),
and helpers to read what they recorded.

The recording effects RPUSH each entry's event id in the batch's transaction, so the list is the proof:
each event once (no effect without its ack, no ack without its effect) and in log order.
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import orjson
import redis

from bus.core.keys import Keys
from bus.dispatch.logroutes.effects import Batch, register_effect


def applied_key(keys: Keys, route: str, symbol: str) -> str:
    return f"{keys.prefix}:{{{symbol}}}:test:applied:{route}"


def applied(client: redis.Redis, keys: Keys, route: str, symbol: str) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else x for x in client.lrange(applied_key(keys, route, symbol), 0, -1)]


@register_effect("tradebus_test.log_record")
def log_record(batch: Batch) -> None:
    for entry in batch.entries:
        batch.tx.rpush(applied_key(batch.keys, batch.route.name, batch.symbol), entry.event.event_id)
    batch.tx.sadd(f"{batch.keys.prefix}:test:drainers", os.getpid())


@register_effect("tradebus_test.log_slow")
def log_slow(batch: Batch) -> None:
    """Records the drainer's pid (before committing) and takes TRADEBUS_TEST_BATCH_DELAY seconds per batch."""
    batch.client.set(f"{batch.keys.prefix}:test:drainer_pid", os.getpid())
    batch.client.incr(f"{batch.keys.prefix}:test:batches")
    time.sleep(float(os.environ.get("TRADEBUS_TEST_BATCH_DELAY", "0.05")))  # the work a real effect does
    log_record(batch)


@register_effect("tradebus_test.log_poison")
def log_poison(batch: Batch) -> None:
    """Fails on every event whose data has ``poison``; counts its attempts on it."""
    for entry in batch.entries:
        if entry.event.data.get("poison"):
            batch.client.incr(f"{batch.keys.prefix}:test:poison_attempts:{len(batch.entries)}")
            raise RuntimeError(f"poison {entry.event.event_id}")
    log_record(batch)


def wake_args(raw: bytes) -> tuple[str, str, str]:
    """(route, symbol, task id) of a wake-up message as kombu's Redis transport stores it."""
    message = orjson.loads(raw)
    args, _kwargs, _embed = orjson.loads(base64.b64decode(message["body"]))
    return args[0], args[1], message["headers"]["id"]


def routes_file(path: Any, routes: list[dict[str, Any]], include_defaults: bool = False) -> str:
    path.write_text(orjson.dumps({"include_defaults": include_defaults, "routes": routes}).decode())
    return str(path)


@register_effect("tradebus_test.log_record_slot")
def log_record_slot(batch: Batch) -> None:
    """``log_record`` without the global drainers set: every key in the symbol's slot (a Redis Cluster)."""
    for entry in batch.entries:
        batch.tx.rpush(applied_key(batch.keys, batch.route.name, batch.symbol), entry.event.event_id)
    for entry in batch.entries:
        if entry.event.data.get("poison"):
            raise RuntimeError(f"poison {entry.event.event_id}")
