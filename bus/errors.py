"""One tree of errors. Each mixes in the builtin (or redis-py exception) it behaves like, so callers
can catch either. Subpackages add subclasses where they need them; ``bus`` re-exports the tree.

The two errors that subclass redis-py's exceptions are built on first use (PEP 562), so that
``import bus.errors`` stays free of redis.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any


class BusError(Exception):
    """Base of every error tradebus raises on purpose."""


class EventValidationError(BusError, ValueError):
    """An event (or one of its fields) is invalid. The message names the field and the value."""

    def __init__(self, message: str, *, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class SchemaVersionError(EventValidationError):
    """An event's ``schema_version`` has a MAJOR version this tradebus cannot read (see bus.events.versions)."""


class ConfigError(BusError, ValueError):
    """A setting is missing or malformed. The message names the variable."""


class DispatchError(BusError):
    """Celery tasks could not be enqueued (raised only in strict dispatch mode)."""


class RoutingError(BusError, ValueError):
    """A routing rule is malformed."""


if TYPE_CHECKING:
    import redis

    class BusConnectionError(BusError, redis.ConnectionError):
        """Redis could not be reached. Catchable as ``redis.ConnectionError``, as the reference does."""

    class BusPermissionError(BusError, redis.exceptions.NoPermissionError):
        """Redis refused a key, channel or command to the ACL user (NOPERM)."""

else:
    # two threads touching the names at once must still get one class each (an except clause compares identity)
    _build_lock = threading.Lock()

    def __getattr__(name: str) -> Any:
        if name not in ("BusConnectionError", "BusPermissionError"):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        with _build_lock:
            if name not in globals():
                _build_redis_errors()
        return globals()[name]

    def _build_redis_errors() -> None:
        import redis

        class BusConnectionError(BusError, redis.ConnectionError):
            """Redis could not be reached. Catchable as ``redis.ConnectionError``, as the reference does."""

        class BusPermissionError(BusError, redis.exceptions.NoPermissionError):
            """Redis refused a key, channel or command to the ACL user (NOPERM). The message says what to
            grant; retrying does not help, so loops stop on it."""

        for cls in (BusConnectionError, BusPermissionError):
            cls.__module__ = __name__
            globals()[cls.__name__] = cls
