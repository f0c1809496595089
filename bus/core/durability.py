"""Publish durability on a replicated Redis: wait, in the publish's own round trip, until N replicas
have the published events (WAIT), so a failover cannot lose an event publish() confirmed.

Redis replication is asynchronous: a master that acknowledged a write and died before shipping it
takes the write with it, and Sentinel promotes a replica without it. ``WAIT n timeout`` after the
writes returns how many replicas have them; with TRADEBUS_PUBLISH_REPLICAS=n publish() confirms only
then, and raises NotReplicatedError when fewer replicas answered in TRADEBUS_PUBLISH_REPLICAS_TIMEOUT_MS.
(The publish pipeline is never a transaction: task messages ride in the publish script, so WAIT is
always its last command.) WAIT does not make a
promoted replica the one that has the write when several replicas exist but fewer than all acked;
Sentinel prefers the most up-to-date replica, which is one of those that acked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bus.config import Settings
from bus.errors import BusError


class NotReplicatedError(BusError):
    """The events are logged on the master, but fewer replicas than TRADEBUS_PUBLISH_REPLICAS confirmed
    them in time: a failover now could lose them. ``log_ids``: what was logged. Publishing them again
    logs them twice (subscribers that keep their event ids drop the second copy)."""

    def __init__(self, message: str, *, log_ids: tuple[str, ...], replicas: int) -> None:
        super().__init__(message)
        self.log_ids = log_ids
        self.replicas = replicas


@dataclass(frozen=True)
class Durability:
    """How many replicas a publish waits for, and for how long (milliseconds; WAIT's 0 = forever is refused)."""

    replicas: int
    timeout_ms: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Durability | None:
        """TRADEBUS_PUBLISH_REPLICAS / _TIMEOUT_MS; None when publish waits for no replica."""
        if not settings.publish_replicas:
            return None
        return cls(settings.publish_replicas, settings.publish_replicas_timeout_ms)

    def stage(self, pipe: Any) -> None:
        """Queue WAIT last on the publish pipeline: it covers every write queued before it."""
        pipe.execute_command("WAIT", self.replicas, self.timeout_ms)

    def check(self, acked: Any, log_ids: list[str]) -> None:
        """Raise NotReplicatedError unless WAIT's reply ``acked`` reaches the replicas asked for."""
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < self.replicas:
            raise NotReplicatedError(
                f"{len(log_ids)} event(s) logged on the master but confirmed by {int(acked)} of"
                f" {self.replicas} replica(s) within {self.timeout_ms} ms: a failover could lose them",
                log_ids=tuple(log_ids),
                replicas=int(acked),
            )
