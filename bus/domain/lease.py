"""A Redis lease with a fencing token: at most one holder at a time, and writes refuse stale holders.

``acquire()`` is one Lua call: ``SET lease NX PX ttl`` and, only if that won, ``INCR fence`` — the token
strictly increases with every new holder. The lease value is ``"<owner>|<token>"``; ``renew()`` and
``release()`` compare it before extending / deleting it, so a holder whose lease expired and was taken
over can neither extend nor release the new holder's lease.

A lease alone cannot stop a paused holder (GC, swap, a stopped container) from writing after its lease
expired. So every write that matters goes through a fence: a per-symbol key remembers the highest token
that wrote there, and a write carrying a lower token is refused inside the same Lua script
(``fenced_script`` / ``check_fence``). The lease and fence keys of one name share a hash tag, so the
acquire script stays in one Redis Cluster slot.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import redis

from bus.core.keys import Keys
from bus.errors import BusError

# Milliseconds a reconciliation lease lives unless renewed; longer than any single job should take.
DEFAULT_LEASE_TTL_MS = 60_000


class StaleTokenError(BusError):
    """A write carried a fencing token older than one that already wrote: its lease was lost."""


_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local token = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
  return token
end
return false
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Prefix for scripts that write under a fence: KEYS[1] is the fence key of the data they touch (same
# slot), ARGV[1] the token. A lower token than the fence's is refused; a higher one raises the fence.
FENCE_PREAMBLE = """
local seen = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token < seen then
  return redis.error_reply('STALE fencing token ' .. ARGV[1] .. ' < ' .. seen)
end
if token > seen then redis.call('SET', KEYS[1], ARGV[1]) end
"""


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class Lease:
    """One named lease. ``with Lease(...) as lease:`` acquires (``lease.token`` is None if not won)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        name: str,
        *,
        ttl_ms: int = DEFAULT_LEASE_TTL_MS,
        owner: str | None = None,
    ) -> None:
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be > 0")
        self.client = client
        self.name = name
        self.ttl_ms = int(ttl_ms)
        self.owner = owner or f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        tag = "{lease-" + name + "}"  # same slot for the lease and its counter
        self.lease_key = keys.lease(tag)
        self.fence_key = keys.fence(tag)
        self.token: int | None = None
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def _value(self) -> str:
        return f"{self.owner}|{self.token}"

    def acquire(self) -> int | None:
        """The new fencing token if this call won the lease, else None (someone else holds it)."""
        token = self._acquire(keys=[self.lease_key, self.fence_key], args=[self.owner, self.ttl_ms])
        self.token = int(token) if token else None
        return self.token

    def renew(self) -> bool:
        """Extend the lease by ``ttl_ms``; False if it is no longer ours (expired or taken over)."""
        if self.token is None:
            return False
        return bool(self._renew(keys=[self.lease_key], args=[self._value, self.ttl_ms]))

    def release(self) -> bool:
        """Delete the lease if it is still ours; never deletes another holder's lease."""
        if self.token is None:
            return False
        released = bool(self._release(keys=[self.lease_key], args=[self._value]))
        self.token = None
        return released

    def is_held(self) -> bool:
        """True if the lease in Redis is still this holder's (a live read, not a cached flag)."""
        return self.token is not None and _text(self.client.get(self.lease_key)) == self._value

    def holder(self) -> str | None:
        """``owner|token`` of whoever holds the lease now, or None."""
        return _text(self.client.get(self.lease_key))

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_fence(client: redis.Redis, fence_key: str, token: int) -> None:
    """Record ``token`` on ``fence_key`` or raise StaleTokenError if a newer token already wrote there."""
    fenced_script(client, "return 1")(keys=[fence_key], args=[token])


class _Fenced:
    def __init__(self, script: Any) -> None:
        self._script = script

    def __call__(self, *, keys: list[str], args: list[Any]) -> Any:
        try:
            return self._script(keys=keys, args=args)
        except redis.ResponseError as e:
            if "STALE fencing token" in str(e):
                raise StaleTokenError(str(e)) from None
            raise


def fenced_script(client: redis.Redis, body: str) -> _Fenced:
    """Register ``FENCE_PREAMBLE + body``; KEYS[1] must be the fence key, ARGV[1] the token.

    Calling the result raises StaleTokenError when the token is older than the fence.
    """
    return _Fenced(client.register_script(FENCE_PREAMBLE + body))
