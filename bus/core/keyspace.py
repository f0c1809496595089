"""Whole-keyspace chores that several parts need (tests, the demo, reconciliation scratch space,
the doctor's memory report)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

#: keys per UNLINK call
DELETE_BATCH = 500


def delete_matching(client: redis.Redis, match: str) -> int:
    """UNLINK every key matching the glob ``match`` (SCAN, so the server is never blocked);
    returns how many were removed."""
    removed = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=match, count=1000):
        batch.append(key)
        if len(batch) >= DELETE_BATCH:
            removed += client.unlink(*batch)
            batch.clear()
    if batch:
        removed += client.unlink(*batch)
    return removed


# --- memory by family ----------------------------------------------------------------------------

#: keys a report looks at, at most (SCAN is O(keys): this bounds its time on a big keyspace)
SCAN_LIMIT = 100_000
#: keys per family whose MEMORY USAGE is measured; a family's total is extrapolated from them
SAMPLES_PER_FAMILY = 100

# The parts after ``<prefix>:`` (bus.core.keys), first match wins; '{…}' is a symbol's hash tag.
_SYM = r"\{[^}]*\}:"
_BUS_FAMILIES = (
    ("logs", rf"{_SYM}(log|heads)"),
    ("state hashes", rf"{_SYM}(order|position):.*"),
    ("state indexes", rf"{_SYM}(orders:open|positions:active)|symbols"),
    ("idempotency windows", rf"{_SYM}seen:.*"),
    ("risk breaches", r"risk:breach:.*"),
    ("risk counters", rf"{_SYM}risk(:loss:.*)?|risk:loss:.*"),
    ("dead letters", rf"({_SYM})?deadletters"),
    ("pending dispatch", rf"({_SYM})?dispatch:pending"),
    ("outbox marks", rf"{_SYM}outbox:.*"),
    ("notify records", r"notified:.*"),
    ("delivery counters", r"deliveries:.*"),
    ("rebuild scratch", r"scratch:.*"),
    # written before retention existed: they never expire; delete them once the retention has passed
    ("legacy idempotency sets", rf"{_SYM}applied:.*|risk:breaches"),
)

Classify = Callable[[str], str | None]


@dataclass
class FamilyMemory:
    """One family of keys; ``bytes`` and the ``persistent_*`` figures (keys with no TTL) are estimated
    from the measured sample when the family has more keys than that."""

    family: str
    keys: int = 0
    bytes: int = 0
    persistent_keys: int = 0
    persistent_bytes: int = 0
    sample: list[str] = field(default_factory=list, repr=False)


@dataclass
class MemoryReport:
    families: list[FamilyMemory]
    scanned: int  # keys the SCAN returned (every key of the database, ours or not)
    total: int  # DBSIZE
    complete: bool  # False: the scan stopped at its limit and counts are scaled by total / scanned

    def lines(self) -> list[str]:
        """One line per family, biggest first; a last line says when figures are scaled estimates."""
        out = [
            f"{f.family}: {f.keys:,} keys, {_size(f.bytes)}"
            + (f" ({_size(f.persistent_bytes)} never expire)" if f.persistent_bytes else "")
            for f in self.families
        ]
        if not self.complete:
            out.append(f"(estimated from {self.scanned:,} of {self.total:,} keys)")
        return out


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GB"


def bus_families(prefix: str) -> Classify:
    """Classifier of the bus's own keys (under ``prefix``); other keys -> None."""
    rules = [(name, re.compile(re.escape(prefix) + ":(?:" + pattern + ")")) for name, pattern in _BUS_FAMILIES]
    head = prefix + ":"

    def classify(key: str) -> str | None:
        if not key.startswith(head):
            return None
        return next((name for name, rule in rules if rule.fullmatch(key)), "other")

    return classify


def broker_families(global_keyprefix: str, queue_keys: Iterable[str]) -> Classify:
    """Classifier of a kombu Redis broker's keys: the queue lists given (priority sub-lists
    included), its unacked bookkeeping and its exchange bindings; other keys -> None."""
    queues = set(queue_keys)
    unacked = {f"{global_keyprefix}unacked{s}" for s in ("", "_index", "_mutex")}
    bindings = f"{global_keyprefix}_kombu.binding."

    def classify(key: str) -> str | None:
        if key in queues:
            return "broker queues"
        if key in unacked:
            return "broker unacked"
        return "broker bindings" if key.startswith(bindings) else None

    return classify


def memory_by_family(
    client: redis.Redis,
    classify: Classify,
    *,
    scan_limit: int | None = SCAN_LIMIT,
    samples: int | None = SAMPLES_PER_FAMILY,
    nested_samples: int = 5,
) -> MemoryReport:
    """Memory of the keyspace by family: SCAN (at most ``scan_limit`` keys; None: all), then MEMORY
    USAGE and PTTL of at most ``samples`` keys per family (None: all). ``nested_samples`` is MEMORY
    USAGE's SAMPLES (0: exact, every element of big values)."""
    families: dict[str, FamilyMemory] = {}
    scanned, complete = 0, True
    for raw in client.scan_iter(count=1000):
        scanned += 1
        key = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        name = classify(key)
        if name is not None:
            fam = families.setdefault(name, FamilyMemory(name))
            fam.keys += 1
            if samples is None or len(fam.sample) < samples:
                fam.sample.append(key)
        if scan_limit is not None and scanned >= scan_limit:
            complete = False
            break
    total = int(client.dbsize())  # type: ignore[arg-type]
    pipe = client.pipeline(transaction=False)
    for fam in families.values():
        for key in fam.sample:
            pipe.memory_usage(key, samples=nested_samples)
            pipe.pttl(key)
    replies = iter(pipe.execute())
    scale = 1.0 if complete else max(1.0, total / scanned)
    for fam in families.values():
        measured = persistent = persistent_keys = 0
        for _ in fam.sample:
            size, ttl = int(next(replies) or 0), next(replies)
            measured += size
            if ttl == -1:
                persistent += size
                persistent_keys += 1
        per_key = fam.keys * scale / len(fam.sample)  # keys each measured one stands for
        fam.keys = round(fam.keys * scale)
        fam.bytes = round(measured * per_key)
        fam.persistent_bytes = round(persistent * per_key)
        fam.persistent_keys = round(persistent_keys * per_key)
    ordered = sorted(families.values(), key=lambda f: -f.bytes)
    return MemoryReport(ordered, scanned, total, complete)
