"""One tree of errors. Each mixes in the builtin it behaves like, so callers can catch either."""

from __future__ import annotations

import redis


class BusError(Exception):
    """Base of every error tradebus raises on purpose."""


class EventValidationError(BusError, ValueError):
    """An event (or one of its fields) is invalid. The message names the field and the value."""

    def __init__(self, message: str, *, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class ConfigError(BusError, ValueError):
    """A setting is missing or malformed. The message names the variable."""


class BusConnectionError(BusError, redis.ConnectionError):
    """Redis could not be reached. Catchable as ``redis.ConnectionError``, as the reference does."""


class BusPermissionError(BusError, redis.exceptions.NoPermissionError):
    """Redis refused a key, channel or command to the ACL user (NOPERM). The message says what to
    grant; retrying does not help, so loops stop on it."""


class DispatchError(BusError):
    """Celery tasks could not be enqueued (raised only in strict dispatch mode)."""


class RoutingError(BusError, ValueError):
    """A routing rule is malformed."""
