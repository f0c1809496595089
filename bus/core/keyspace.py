"""Whole-keyspace chores that several parts need (tests, the demo, reconciliation scratch space)."""

from __future__ import annotations

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
