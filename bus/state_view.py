"""Read-only views of the state projection for risk and reconciliation (str in, str out).

The projection itself (bus/state.py + state.lua) owns the writes; these helpers only read the keys it
writes, named by ``Keys``, and work with clients built with or without ``decode_responses``.
"""

from __future__ import annotations

from typing import Any

import redis

from .channels import Keys


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def hash_of(client: redis.Redis, key: str) -> dict[str, str]:
    return {text(k): text(v) for k, v in client.hgetall(key).items()}


def known_symbols(client: redis.Redis, keys: Keys, extra: str | None = None) -> list[str]:
    """Every symbol with a log (plus ``extra``), sorted."""
    symbols = {text(s) for s in client.smembers(keys.symbols())}
    if extra:
        symbols.add(extra)
    return sorted(symbols)


def _entities(client: redis.Redis, index: str, key_of: Any) -> list[dict[str, str]]:
    ids = sorted(text(i) for i in client.smembers(index))
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for entity_id in ids:
        pipe.hgetall(key_of(entity_id))
    return [{text(k): text(v) for k, v in h.items()} for h in pipe.execute() if h]


def active_positions(client: redis.Redis, keys: Keys, symbol: str) -> list[dict[str, str]]:
    """Hashes of the symbol's active positions (``position_id``, ``volume`` remaining, ``status``...)."""
    return _entities(client, keys.active_positions(symbol), lambda pid: keys.position(symbol, pid))


def open_orders(client: redis.Redis, keys: Keys, symbol: str) -> list[dict[str, str]]:
    """Hashes of the symbol's pending / partially filled orders."""
    return _entities(client, keys.open_orders(symbol), lambda oid: keys.order(symbol, oid))
