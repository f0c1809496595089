"""What every `tradebus` command shares: settings, connections, output, and how errors end a run.

Exit codes: 0 ok; 1 something is wrong (doctor found a problem, Redis unreachable, not found);
2 bad usage (unknown option, bad event type or symbol, malformed setting).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import redis
import typer
from rich.console import Console

from bus.config import LoadEnvironmentVariables, Settings, safe_url
from bus.core.connection import make_client
from bus.demo.errors import DemoError
from bus.errors import BusConnectionError, ConfigError, EventValidationError

if TYPE_CHECKING:
    from bus.core.bus import RedisEventBus
    from bus.dispatch.routing import RoutingTable
    from bus.events.types import EventType

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2

#: seconds the CLI waits for Redis before saying it is unreachable
CLI_CONNECT_TIMEOUT = 2.0

# Not a terminal (a pipe, a log, CI): wide enough that tables are not cut at 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON).")]


class CliError(Exception):
    """Ends the command with a one-line message on stderr and ``code``."""

    def __init__(self, message: str, code: int = EXIT_PROBLEM) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class CliContext:
    """Options given before the command name (``tradebus --redis-url ... state``)."""

    env_file: Path | None = Path(".env")
    redis_url: str | None = None
    broker_url: str | None = None
    key_prefix: str | None = None
    as_json: bool = False
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            overrides: dict[str, Any] = {}
            if self.redis_url:
                overrides["redis_url"] = self.redis_url
            if self.broker_url:
                overrides["celery_broker_url"] = self.broker_url
            if self.key_prefix:
                overrides["key_prefix"] = self.key_prefix
            self._settings = LoadEnvironmentVariables(self.env_file, **overrides)
        return self._settings

    def routing(self) -> RoutingTable:
        """The workers' routing table: TRADEBUS_ROUTES_FILE, else the default routes."""
        from bus.dispatch.routing import RoutingTable

        s = self.settings
        return RoutingTable.from_file(s.routes_file) if s.routes_file else RoutingTable.default()

    def load_event_types(self) -> None:
        """Register the custom event types of TRADEBUS_EVENT_TYPES_MODULE, so every command knows them.
        Malformed settings are left to the command to report when it reads them."""
        try:
            modules = self.settings.event_types_module
        except ConfigError:
            return
        if modules:
            from bus.events.registry import load_event_types

            load_event_types(modules)

    def client(self, *, check: bool = True) -> redis.Redis:
        """A redis-py client for the bus (bytes replies); ``check`` PINGs it and fails with a one-line error."""
        return connect(self.settings, check=check)

    def bus(self, *, dispatch: bool = False, **kw: Any) -> RedisEventBus:
        """A RedisEventBus for these settings (connection checked); ``dispatch``: with a Dispatcher,
        so publishing enqueues the routed Celery tasks."""
        from bus.dispatch.factory import EventBusFactory

        self.client(check=True).close()
        if dispatch:
            from bus.dispatch.dispatcher import Dispatcher

            kw["dispatcher"] = Dispatcher.from_settings(self.settings)
        return EventBusFactory.create_from_env(self.settings, **kw)


def connect(settings: Settings, *, check: bool = True) -> redis.Redis:
    # A person is waiting: say "unreachable" within CLI_CONNECT_TIMEOUT, but give a slow command at least as long.
    interactive = settings.model_copy(
        update={
            "redis_connect_timeout": min(settings.redis_connect_timeout, CLI_CONNECT_TIMEOUT),
            "redis_socket_timeout": max(settings.redis_socket_timeout, CLI_CONNECT_TIMEOUT),
        }
    )
    client = make_client(settings.bus_url, interactive)
    if check:
        try:
            client.ping()
        except redis.AuthenticationError as e:
            client.close()
            raise CliError(f"Redis at {safe_url(settings.bus_url)} refused the credentials: {e}") from None
        except (redis.RedisError, OSError) as e:
            client.close()
            raise CliError(unreachable(settings.bus_url, e)) from None
    return client


def unreachable(url: str, exc: BaseException | None = None, *, hint: bool = True) -> str:
    why = f" ({_first_line(exc)})" if exc else ""
    fix = "; start Redis, or set REDIS_URL / --redis-url (`tradebus doctor` checks the setup)" if hint else ""
    return f"cannot reach Redis at {safe_url(url)}{why}{fix}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def error_message(exc: BaseException) -> tuple[str, int]:
    """The one line and the exit code an exception ends the command with."""
    if isinstance(exc, CliError):
        return str(exc), exc.code
    if isinstance(exc, DemoError):
        return str(exc), EXIT_PROBLEM
    if isinstance(exc, (EventValidationError, ConfigError)):
        return _first_line(exc), EXIT_USAGE
    if isinstance(exc, (BusConnectionError, redis.ConnectionError, redis.TimeoutError)):
        return f"Redis connection failed: {_scrub(_first_line(exc))}", EXIT_PROBLEM
    if isinstance(exc, redis.RedisError):
        return f"Redis error: {_scrub(_first_line(exc))}", EXIT_PROBLEM
    return (
        f"{type(exc).__name__}: {_scrub(_first_line(exc))} (set TRADEBUS_DEBUG=1 for a traceback)",
        EXIT_PROBLEM,
    )


def _scrub(text: str) -> str:
    """Redact anything that looks like a URL with a password."""
    return re.sub(r"([a-z+]+://[^:/@\s]*:)[^@\s]+@", r"\1***@", text)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()


def parse_type(value: str) -> EventType:
    """An event type from its value or name, else a usage error listing the valid ones."""
    from bus.events.registry import SPECS
    from bus.events.types import TradeEventType

    try:
        return TradeEventType.parse(value)
    except EventValidationError:
        valid = ", ".join(SPECS)
        raise CliError(f"unknown event type {value!r}; valid: {valid}", EXIT_USAGE) from None


def parse_symbol(value: str) -> str:
    from bus.events.rules import validate_symbol

    try:
        return validate_symbol(value)
    except EventValidationError as e:
        raise CliError(str(e), EXIT_USAGE) from None
