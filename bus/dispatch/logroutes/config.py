"""Settings of log routes: TRADEBUS_LOGROUTE_* (``settings.log_routes``) and what they set."""

from __future__ import annotations

from dataclasses import dataclass

from bus.config import LogRouteSettings
from bus.errors import ConfigError


@dataclass(frozen=True)
class LogRouteConfig:
    """``batch``: entries per read and transaction. ``claim_after`` (s): a dead drainer's entries are
    taken over within this, which sets the lease and flag TTLs (half of it) and the age beat waits for.
    ``time_budget`` (s): a drain task re-enqueues itself after this, so a busy symbol cannot hold a
    worker process for ever."""

    batch: int = 100
    claim_after: float = 30.0
    time_budget: float = 2.0

    def __post_init__(self) -> None:
        if self.batch < 1 or self.claim_after <= 0 or self.time_budget <= 0:
            raise ConfigError(f"log routes: batch >= 1, claim_after > 0 and time_budget > 0, got {self}")

    @property
    def lease_ms(self) -> int:
        """A drainer renews its lease with every batch; silent this long, it is presumed dead."""
        return max(100, int(self.claim_after * 1000 / 2))

    @property
    def flag_ttl_ms(self) -> int:
        """A wake flag outlives a lost wake-up this long: the next publish after it sends another."""
        return self.lease_ms

    @property
    def wake_grace_ms(self) -> int:
        """Beat wakes a group whose oldest waiting entry is older than this and that has no drainer."""
        return max(50, int(self.claim_after * 1000 / 10))

    @classmethod
    def from_settings(cls, log_routes: LogRouteSettings) -> LogRouteConfig:
        """``settings.log_routes`` (TRADEBUS_LOGROUTE_BATCH, _CLAIM_AFTER, _TIME_BUDGET); unset ones keep
        the defaults above."""
        return cls(**log_routes.model_dump(exclude_none=True))
