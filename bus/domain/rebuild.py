"""Rebuild orders and positions from the event log and repair drift in the state hashes.

Per symbol: replay the log (up to ``now - grace``) through the real projection into scratch keys, then
compare every entity the log fully describes with the live hash and index. A drifted entity is
repaired by one fenced Lua step that copies the rebuilt hash and idempotency window (so a later
redelivery of a replayed event stays a no-op), with their expiry, and fixes the index membership.
A terminal entity absent from the live state whose last log entry is older than the retention expired
as designed (bus.core.state): it is counted, not restored.

Safety against concurrent writers: an entity with log entries younger than ``grace`` is left alone (its
events may still be in flight to the state task); the repair script refuses when the live entity has
applied an event the replay did not see; a stale fencing token is refused (StaleTokenError). Entities
whose first logged event is not their creation (older entries were trimmed) cannot be rebuilt and are
only counted; index entries pointing at no hash at all are removed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, cast

import redis

from bus.core.keys import Keys
from bus.core.keyspace import delete_matching
from bus.core.scripts import execute_pipeline
from bus.core.state import SCRIPT as STATE_SCRIPT
from bus.core.state import stage_apply
from bus.core.wire import decode_entry, parse_id, text
from bus.defaults import DEFAULT_STATE_RETENTION
from bus.domain.lease import fenced_script
from bus.events.model import TradeEvent, TradeEventType
from bus.events.types import EventType

# Log entries read per XRANGE call.
READ_BATCH = 1000
# What XRANGE returns: [(log id, fields)], bytes or str as the client decodes
_Entries = list[tuple[bytes | str, dict[Any, Any]]]
_CREATION = {"order": TradeEventType.ORDER_CREATED, "position": TradeEventType.POSITION_OPENED}
_ACTIVE = {"order": ("pending", "partially_filled"), "position": ("active",)}

# The live window may only hold ids the replay saw ('' is the window's floor marker); COPY keeps the TTL.
_REPAIR = """
for _, id in ipairs(redis.call('ZDIFF', 2, KEYS[3], KEYS[6])) do
  if id ~= '' then return 0 end
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('COPY', KEYS[5], KEYS[2])
redis.call('COPY', KEYS[6], KEYS[3])
if ARGV[3] == '1' then redis.call('SADD', KEYS[4], ARGV[2]) else redis.call('SREM', KEYS[4], ARGV[2]) end
return 1
"""

_DROP_INDEX = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('SREM', KEYS[3], ARGV[2])
"""


def _decoded(h: dict[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in h.items()}


def _entity(event: TradeEvent) -> tuple[str, str] | None:
    if event.event_type.is_order:
        return "order", str(event.data["order_id"])
    if event.event_type.is_position:
        return "position", str(event.data["position_id"])
    return None


def _hash_key(keys: Keys, symbol: str, kind: str, entity_id: str) -> str:
    return keys.order(symbol, entity_id) if kind == "order" else keys.position(symbol, entity_id)


def _index_key(keys: Keys, symbol: str, kind: str) -> str:
    return keys.open_orders(symbol) if kind == "order" else keys.active_positions(symbol)


def rebuild_symbol(
    client: redis.Redis,
    keys: Keys,
    symbol: str,
    *,
    token: int,
    grace_ms: int,
    now_ms: int,
    repair: bool = True,
    retention: int = DEFAULT_STATE_RETENTION,
) -> dict[str, Any]:
    """Rebuild one symbol; return ``{"symbol", "checked", "drift": [...], "in_flight", "incomplete",
    "expired", ...}``."""
    scratch = keys.scratch(uuid.uuid4().hex[:12])
    cutoff = now_ms - grace_ms
    first_type: dict[tuple[str, str], EventType] = {}
    last_ms: dict[tuple[str, str], int] = {}
    recent: set[tuple[str, str]] = set()
    STATE_SCRIPT.load(client)
    start = "-"
    try:
        while True:
            entries = cast(_Entries, client.xrange(keys.log(symbol), start, "+", count=READ_BATCH))
            if not entries:
                break
            pipe = client.pipeline(transaction=False)
            for log_id, fields in entries:
                event = decode_entry(fields)
                entity = _entity(event) if event is not None and event.symbol == symbol else None
                if entity is None or event is None:  # entity is None whenever event is
                    continue
                logged_ms = parse_id(log_id)[0]
                if logged_ms > cutoff:
                    recent.add(entity)
                    continue
                first_type.setdefault(entity, event.event_type)
                last_ms[entity] = logged_ms
                stage_apply(pipe, scratch, event, retention=retention)  # no `now`: a replay is never late
            execute_pipeline(pipe, (STATE_SCRIPT,))
            if len(entries) < READ_BATCH:
                break
            start = "(" + text(entries[-1][0])
        expired_before = now_ms - retention * 1000 if retention else None
        expired = {e for e, ms in last_ms.items() if expired_before is not None and ms < expired_before}
        return _compare_and_repair(client, keys, scratch, symbol, first_type, recent, expired, token, repair)
    finally:
        _delete_scratch(client, scratch)


def _compare_and_repair(
    client: redis.Redis,
    keys: Keys,
    scratch: Keys,
    symbol: str,
    first_type: dict[tuple[str, str], EventType],
    recent: set[tuple[str, str]],
    expired: set[tuple[str, str]],
    token: int,
    repair: bool,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "symbol": symbol,
        "checked": 0,
        "drift": [],
        "in_flight": len(recent),
        "incomplete": 0,
        "expired": 0,
        "dangling_removed": [],
        "skipped_changed": [],
    }
    repair_script = fenced_script(client, _REPAIR)
    fence = keys.symbol_fence(symbol)
    for (kind, entity_id), first in sorted(first_type.items()):
        if (kind, entity_id) in recent:
            continue
        if first is not _CREATION[kind]:
            report["incomplete"] += 1
            continue
        report["checked"] += 1
        live_key, rebuilt_key = _hash_key(keys, symbol, kind, entity_id), _hash_key(scratch, symbol, kind, entity_id)
        live, rebuilt = _decoded(client.hgetall(live_key)), _decoded(client.hgetall(rebuilt_key))
        should_index = rebuilt.get("status") in _ACTIVE[kind]
        if not live and not should_index and (kind, entity_id) in expired:
            report["expired"] += 1
            continue
        in_index = bool(client.sismember(_index_key(keys, symbol, kind), entity_id))
        fields = {
            f: [live.get(f), rebuilt.get(f)] for f in sorted(set(live) | set(rebuilt)) if live.get(f) != rebuilt.get(f)
        }
        if not fields and in_index == should_index:
            continue
        item: dict[str, Any] = {
            "kind": kind,
            "id": entity_id,
            "fields": fields,
            "index": [in_index, should_index],
            "repaired": False,
        }
        if repair:
            done = repair_script(
                keys=[
                    fence,
                    live_key,
                    keys.seen(symbol, kind, entity_id),
                    _index_key(keys, symbol, kind),
                    rebuilt_key,
                    scratch.seen(symbol, kind, entity_id),
                ],
                args=[token, entity_id, "1" if should_index else "0"],
            )
            item["repaired"] = bool(done)
            if not done:
                report["skipped_changed"].append(f"{kind}:{entity_id}")
        report["drift"].append(item)
    if repair:
        report["dangling_removed"] = _drop_dangling(client, keys, symbol, token)
    return report


def _drop_dangling(client: redis.Redis, keys: Keys, symbol: str, token: int) -> list[str]:
    """Index entries whose hash does not exist at all: nothing can make them right; remove them."""
    drop = fenced_script(client, _DROP_INDEX)
    removed = []
    for kind in ("order", "position"):
        index = _index_key(keys, symbol, kind)
        for raw in client.smembers(index):
            entity_id = text(raw)
            key = _hash_key(keys, symbol, kind, entity_id)
            if not client.exists(key) and drop(keys=[keys.symbol_fence(symbol), key, index], args=[token, entity_id]):
                removed.append(f"{kind}:{entity_id}")
    return removed


def _delete_scratch(client: redis.Redis, scratch: Keys) -> None:
    delete_matching(client, f"{scratch.prefix}:*")


def rebuild_state(
    client: redis.Redis,
    keys: Keys,
    symbols: list[str],
    *,
    token: int,
    grace_ms: int,
    now_ms: int,
    repair: bool = True,
    heartbeat: Callable[[], None] | None = None,
    retention: int = DEFAULT_STATE_RETENTION,
) -> dict[str, Any]:
    """Rebuild every symbol in turn (``heartbeat`` between symbols renews the lease)."""
    per_symbol = []
    for symbol in symbols:
        if heartbeat is not None:
            heartbeat()
        per_symbol.append(
            rebuild_symbol(
                client, keys, symbol, token=token, grace_ms=grace_ms, now_ms=now_ms, repair=repair, retention=retention
            )
        )
    drift = [dict(d, symbol=r["symbol"]) for r in per_symbol for d in r["drift"]]
    return {
        "symbols": len(per_symbol),
        "checked": sum(r["checked"] for r in per_symbol),
        "repaired": sum(1 for d in drift if d["repaired"]),
        "drift": drift,
        "in_flight": sum(r["in_flight"] for r in per_symbol),
        "incomplete": sum(r["incomplete"] for r in per_symbol),
        "expired": sum(r["expired"] for r in per_symbol),
        "dangling_removed": [f"{r['symbol']}:{x}" for r in per_symbol for x in r["dangling_removed"]],
        "skipped_changed": [f"{r['symbol']}:{x}" for r in per_symbol for x in r["skipped_changed"]],
    }
