"""The kill switch in Redis: hash ``Keys.kill_switch()`` of symbol -> reason. While a symbol is in it,
executors refuse new orders on that symbol. Shared by every executor, the risk side and the CLI."""

from __future__ import annotations

from typing import Any

import redis

from bus.core.keys import Keys


def engage_kill_switch(client: redis.Redis, keys: Keys, symbol: str, reason: str) -> None:
    client.hset(keys.kill_switch(), symbol, reason)


def release_kill_switch(client: redis.Redis, keys: Keys, symbol: str) -> bool:
    return bool(client.hdel(keys.kill_switch(), symbol))


def kill_switch_reason(client: redis.Redis, keys: Keys, symbol: str) -> str | None:
    raw = client.hget(keys.kill_switch(), symbol)
    return raw.decode() if isinstance(raw, bytes) else raw


def kill_switches(client: redis.Redis, keys: Keys) -> dict[str, str]:
    raw = client.hgetall(keys.kill_switch())
    return {_s(k): _s(v) for k, v in raw.items()}


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
