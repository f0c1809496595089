"""Beat reconciliation jobs: plain functions returning JSON-able reports, run under a lease.

``run_job`` gives one effective run per schedule slot even with two beat processes: the job runs only
while holding the lease ``reconcile-<job>`` (fencing token passed to every write), and only if its last
effective run finished at least ``min_interval_s`` ago — so the second beat's copy of the task, arriving
while or just after the first runs, is skipped and says why.

Jobs: ``redispatch`` (logged events whose dispatch was not recorded), ``rebuild`` (state from the log,
see reconcile_state), ``stale_orders`` (pending orders older than an age), ``broker`` (active positions
against a broker snapshot) and ``trim`` (log retention, never past an event still awaiting dispatch).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import redis

from bus.config import ReconcileSettings
from bus.core.keys import Keys
from bus.core.state import active_positions, open_orders
from bus.defaults import DEFAULT_STATE_RETENTION
from bus.dispatch.logroutes.monitor import oldest_needed
from bus.domain.lease import DEFAULT_LEASE_TTL_MS, Lease, StaleTokenError, fenced_script
from bus.domain.rebuild import rebuild_state

log = logging.getLogger(__name__)


class LeaseLostError(StaleTokenError):
    """The job's lease expired or was taken over while it ran; it stopped."""


class PositionsSource(Protocol):
    """What reconciliation needs from a broker (bus.broker.TradingVenue has it)."""

    def positions(self) -> list[dict[str, str]]:
        """[{"symbol", "position_id", "direction", "volume" (decimal str), "entry_price"}]"""
        ...


@dataclass(frozen=True)
class ReconcileConfig:
    """Ages in seconds. ``from_settings`` takes TRADEBUS_RECONCILE_<FIELD> (e.g. _STALE_ORDER_AGE)."""

    redispatch_grace: float = 30.0  # a dispatch not recorded after this long is missed
    rebuild_grace: float = 30.0  # entities with younger log entries may still be in flight
    stale_order_age: float = 3600.0  # pending orders older than this are flagged
    log_retention: float | None = None  # XTRIM MINID: drop log entries older than this
    log_maxlen: int | None = None  # XTRIM MAXLEN (exact), skipped while dispatches are pending
    lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS

    @classmethod
    def from_settings(cls, reconcile: ReconcileSettings) -> ReconcileConfig:
        """``settings.reconcile``'s values; unset ones keep the defaults above."""
        return cls(**reconcile.model_dump(exclude_none=True, exclude={"broker_factory"}))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def server_ms(client: redis.Redis) -> int:
    """Redis server time in ms: every process compares against the same clock."""
    secs, micros = client.time()
    return int(secs) * 1000 + int(micros) // 1000


def symbols_of(client: redis.Redis, keys: Keys) -> list[str]:
    return sorted(_text(s) for s in client.smembers(keys.symbols()))


# --- running under a lease --------------------------------------------------------------------------

Job = Callable[[int, Callable[[], None]], dict[str, Any]]


def run_job(
    client: redis.Redis,
    keys: Keys,
    name: str,
    job: Job,
    *,
    min_interval_s: float = 0.0,
    ttl_ms: int = DEFAULT_LEASE_TTL_MS,
    owner: str | None = None,
) -> dict[str, Any]:
    """Run ``job(token, heartbeat)`` if this process wins the lease and the job is due; report."""
    lease = Lease(client, keys, f"reconcile-{name}", ttl_ms=ttl_ms, owner=owner)
    token = lease.acquire()
    if token is None:
        return {"job": name, "ran": False, "reason": f"lease held by {lease.holder()}"}

    def heartbeat() -> None:
        if not lease.renew():
            raise LeaseLostError(f"lease of reconcile job {name} lost (token {token})")

    try:
        last = client.hget(keys.reconcile_runs(), name)
        now = server_ms(client)
        if last is not None and min_interval_s > 0:
            finished = json.loads(last)["finished_ms"]
            if now - finished < min_interval_s * 1000:
                return {"job": name, "ran": False, "reason": f"ran {(now - finished) / 1000:.1f}s ago"}
        report = job(token, heartbeat)
        record = {
            "finished_ms": server_ms(client),
            "token": token,
            "owner": lease.owner,
            "summary": {k: v for k, v in report.items() if isinstance(v, int | float | str)},
        }
        _RUNS(client, keys, name, token, json.dumps(record))
        return {"job": name, "ran": True, "token": token, **report}
    finally:
        lease.release()


def _RUNS(client: redis.Redis, keys: Keys, name: str, token: int, record: str) -> None:  # noqa: N802
    fenced_script(client, "redis.call('HSET', KEYS[2], ARGV[2], ARGV[3]) return 1")(
        keys=[keys.job_fence(), keys.reconcile_runs()], args=[token, name, record]
    )


def last_runs(client: redis.Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    """Job name -> its last effective run (for the CLI)."""
    return {_text(k): json.loads(v) for k, v in client.hgetall(keys.reconcile_runs()).items()}


# --- jobs ----------------------------------------------------------------------------------------------


def redispatch(dispatcher: Any, *, grace_s: float) -> dict[str, Any]:
    """Re-dispatch logged events whose dispatch was not recorded after ``grace_s`` (bus.dispatch)."""
    fn = getattr(dispatcher, "redispatch_missed", None)
    if fn is None:
        return {"redispatched": 0, "skipped": "no dispatcher with redispatch_missed"}
    return {"redispatched": int(fn(grace_seconds=grace_s))}


def rebuild(
    client: redis.Redis,
    keys: Keys,
    *,
    token: int,
    grace_s: float,
    repair: bool = True,
    symbols: list[str] | None = None,
    heartbeat: Callable[[], None] | None = None,
    retention: int = DEFAULT_STATE_RETENTION,
) -> dict[str, Any]:
    """Rebuild orders/positions from the log and repair drift (see bus.reconcile_state)."""
    return rebuild_state(
        client,
        keys,
        symbols if symbols is not None else symbols_of(client, keys),
        token=token,
        grace_ms=int(grace_s * 1000),
        now_ms=server_ms(client),
        repair=repair,
        heartbeat=heartbeat,
        retention=retention,
    )


def _age_s(created_at: str | None, now_ms: int) -> float | None:
    if not created_at:
        return None
    try:
        return now_ms / 1000 - datetime.fromisoformat(created_at).timestamp()
    except ValueError:
        return None


def flag_stale_orders(
    client: redis.Redis, keys: Keys, *, max_age_s: float, token: int | None = None, symbols: list[str] | None = None
) -> dict[str, Any]:
    """Pending / partially filled orders created more than ``max_age_s`` ago.

    With a token, the flags replace the hash ``keys.stale_orders()`` (fenced) for the CLI to show.
    """
    now = server_ms(client)
    stale = []
    for symbol in symbols if symbols is not None else symbols_of(client, keys):
        for order in open_orders(client, keys, symbol):
            age = _age_s(order.get("created_at"), now)
            if age is not None and age > max_age_s:
                stale.append(
                    {
                        "symbol": symbol,
                        "order_id": order.get("order_id"),
                        "status": order.get("status"),
                        "created_at": order.get("created_at"),
                        "age_s": round(age, 3),
                    }
                )
    if token is not None:
        args: list[Any] = [token]
        for item in stale:
            args += [f"{item['symbol']}|{item['order_id']}", json.dumps(item)]
        fenced_script(
            client,
            "redis.call('DEL', KEYS[2]) for i = 2, #ARGV, 2 do "
            "redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end return 1",
        )(keys=[keys.job_fence(), keys.stale_orders()], args=args)
    for item in stale:
        log.warning("stale order %s %s: %s for %.0fs", item["symbol"], item["order_id"], item["status"], item["age_s"])
    return {"stale": stale, "count": len(stale)}


def _dec(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def reconcile_broker(client: redis.Redis, keys: Keys, broker: PositionsSource) -> dict[str, Any]:
    """Compare the broker's open positions with the active positions in state; report differences."""
    theirs = {(p["symbol"], str(p["position_id"])): p for p in broker.positions()}
    symbols = set(symbols_of(client, keys)) | {s for s, _ in theirs}
    ours = {(s, p["position_id"]): p for s in sorted(symbols) for p in active_positions(client, keys, s)}
    mismatched = []
    for key in sorted(set(theirs) & set(ours)):
        b, o = theirs[key], ours[key]
        diffs = {}
        if _dec(b.get("volume")) != _dec(o.get("volume")):
            diffs["volume"] = {"broker": str(b.get("volume")), "state": o.get("volume")}
        if str(b.get("direction", "")).upper() != str(o.get("direction", "")).upper():
            diffs["direction"] = {"broker": b.get("direction"), "state": o.get("direction")}
        if diffs:
            mismatched.append({"symbol": key[0], "position_id": key[1], "diff": diffs})
    report = {
        "broker_positions": len(theirs),
        "state_positions": len(ours),
        "missing_in_state": [{"symbol": s, "position_id": p} for s, p in sorted(set(theirs) - set(ours))],
        "missing_at_broker": [{"symbol": s, "position_id": p} for s, p in sorted(set(ours) - set(theirs))],
        "mismatched": mismatched,
    }
    report["ok"] = not (report["missing_in_state"] or report["missing_at_broker"] or mismatched)
    if not report["ok"]:
        log.warning("broker reconciliation found differences: %s", json.dumps(report)[:2000])
    return report


def trim_logs(
    client: redis.Redis,
    keys: Keys,
    *,
    token: int,
    retention_s: float | None = None,
    maxlen: int | None = None,
    symbols: list[str] | None = None,
) -> dict[str, Any]:
    """XTRIM each symbol's log by age (MINID) and/or length (MAXLEN), never dropping an entry whose
    dispatch is still pending (the redispatch job needs it), nor one a log route has not acknowledged."""
    now = server_ms(client)
    trim = fenced_script(
        client,
        """
local removed = 0
if ARGV[2] ~= '' then removed = removed + redis.call('XTRIM', KEYS[2], 'MINID', ARGV[2]) end
if ARGV[3] ~= '' then removed = removed + redis.call('XTRIM', KEYS[2], 'MAXLEN', ARGV[3]) end
return removed
""",
    )
    out: dict[str, Any] = {"removed": {}, "held_by_pending_dispatch": [], "held_by_log_routes": []}
    for symbol in symbols if symbols is not None else symbols_of(client, keys):
        minid = f"{now - int(retention_s * 1000)}-0" if retention_s is not None else ""
        length = "" if maxlen is None else str(maxlen)
        oldest = client.zrange(keys.pending_dispatch_for(symbol), 0, 0)
        if oldest:
            pending = _text(oldest[0])
            if minid and _id_key(pending) < _id_key(minid):
                minid = pending
                out["held_by_pending_dispatch"].append(symbol)
            if length:
                length = ""  # a length cut could drop the pending entry; age retention still applies
                if symbol not in out["held_by_pending_dispatch"]:
                    out["held_by_pending_dispatch"].append(symbol)
        needed = oldest_needed(client, keys, symbol)  # kept for a log route that has not acknowledged it
        if needed is not None and (length or (minid and _id_key(needed) < _id_key(minid))):
            length = ""  # as for a pending dispatch: a length cut could drop it; age retention still applies
            minid = min(minid, needed, key=_id_key) if minid else ""
            out["held_by_log_routes"].append(symbol)
        if not minid and not length:
            continue
        removed = trim(keys=[keys.symbol_fence(symbol), keys.log(symbol)], args=[token, minid, length])
        if removed:
            out["removed"][symbol] = int(removed)
    out["total_removed"] = sum(out["removed"].values())
    return out


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


__all__ = [
    "LeaseLostError",
    "PositionsSource",
    "ReconcileConfig",
    "flag_stale_orders",
    "last_runs",
    "rebuild",
    "reconcile_broker",
    "redispatch",
    "run_job",
    "server_ms",
    "trim_logs",
]
