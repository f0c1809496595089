"""Routing rules: which Celery tasks an event triggers, on which queue, with which retry policy.

A route matches an event when its event type matches one of ``event_types`` and its symbol matches
one of ``symbols`` (shell globs: ``order.*``, ``risk.*``, ``*``, ``XAU*``). Rules are plain data: they
name tasks by string, so this module never imports Celery. A bad rule raises RoutingError when the
table is built (at start-up), naming the rule and the field.

A route also carries the Celery options of its messages, as ``apply_async`` takes them: ``priority``
(0-9, higher runs sooner on both brokers), ``ignore_result`` (unset: the task's own setting),
``expires`` and ``countdown`` (seconds after the publish). A route without a ``queue`` is placed by the
Celery app's router (``task_routes``), as ``send_task`` would place its task.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from bus.dispatch.names import (
    NOTIFY_QUEUE,
    NOTIFY_TASK,
    QUEUES,
    RISK_QUEUE,
    RISK_TASK,
    STATE_QUEUE,
    STATE_TASK,
)
from bus.errors import RoutingError
from bus.events.model import TradeEvent
from bus.events.registry import SPECS, custom_specs

# Longest retry countdown. On kombu's own Redis transport (redis+socket://) it must stay below the visibility
# timeout, or Redis redelivers the message while it waits (celery#2599, kombu#337): celery_app.config sets
# that timeout above this bound; celery_app's transport refreshes held messages instead (celery_app.heartbeat).
MAX_BACKOFF_SECONDS = 1800.0
# Route names become part of task ids ("{event_id}:{route}") and stats fields.
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: attempt n waits min(backoff * 2**n, backoff_max), +-50% jitter."""

    max_retries: int = 5
    backoff: float = 1.0
    backoff_max: float = 60.0
    jitter: bool = True

    def countdown(self, retries: int, rand: float = 0.5) -> float:
        """Seconds before retry number ``retries`` (0-based); ``rand`` in [0, 1) is the jitter draw."""
        delay = min(self.backoff * (2**retries), self.backoff_max)
        if self.jitter:
            delay *= 0.5 + rand
        return min(delay, self.backoff_max)


@dataclass(frozen=True)
class Route:
    name: str
    task: str
    queue: str = ""  # "": the Celery app's router (task_routes) decides
    event_types: tuple[str, ...] = ("*",)
    symbols: tuple[str, ...] = ("*",)
    priority: int = 0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    ignore_result: bool | None = None  # None: the task's own ignore_result
    expires: float | None = None  # seconds after the publish; an expired task is not run
    countdown: float | None = None  # seconds after the publish before the task runs

    def __post_init__(self) -> None:
        _check_route(self)

    def matches(self, event_type: str, symbol: str) -> bool:
        return any(fnmatchcase(event_type, p) for p in self.event_types) and any(
            fnmatchcase(symbol, p) for p in self.symbols
        )


def _fail(route: str, fld: str, why: str) -> RoutingError:
    return RoutingError(f"route {route!r}: {fld} {why}")


def _check_route(r: Route) -> None:
    name = r.name if isinstance(r.name, str) else repr(r.name)
    if not isinstance(r.name, str) or not _NAME.match(r.name):
        raise _fail(name, "name", "must be 1-64 characters of letters, digits, '_', '.', '-'")
    for fld in ("task", "queue"):
        value = getattr(r, fld)
        # an empty queue: Celery's router places the task
        if not isinstance(value, str) or not (value.strip() or fld == "queue") or any(c.isspace() for c in value):
            raise _fail(name, fld, f"must be a non-empty string without whitespace, got {value!r}")
    for fld in ("event_types", "symbols"):
        value = getattr(r, fld)
        if not isinstance(value, tuple) or not value or not all(isinstance(p, str) and p for p in value):
            raise _fail(name, fld, f"must be a non-empty list of non-empty strings, got {value!r}")
    for pattern in r.event_types:
        if not any(fnmatchcase(t, pattern) for t in SPECS):  # built-in and registered types
            raise _fail(name, "event_types", f"pattern {pattern!r} matches no event type")
    if isinstance(r.priority, bool) or not isinstance(r.priority, int) or not 0 <= r.priority <= 9:
        raise _fail(name, "priority", f"must be an integer 0-9, got {r.priority!r}")
    _check_options(r, name)
    p = r.retry
    if not isinstance(p, RetryPolicy):
        raise _fail(name, "retry", f"must be a RetryPolicy, got {p!r}")
    if isinstance(p.max_retries, bool) or not isinstance(p.max_retries, int) or p.max_retries < 0:
        raise _fail(name, "retry.max_retries", f"must be an integer >= 0, got {p.max_retries!r}")
    for fld in ("backoff", "backoff_max"):
        v = getattr(p, fld)
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= MAX_BACKOFF_SECONDS:
            raise _fail(name, f"retry.{fld}", f"must be a number of seconds in [0, {MAX_BACKOFF_SECONDS:g}], got {v!r}")
    if p.backoff_max < p.backoff:
        raise _fail(name, "retry.backoff_max", f"({p.backoff_max}) must be >= retry.backoff ({p.backoff})")


def _check_options(r: Route, name: str) -> None:
    if r.ignore_result is not None and not isinstance(r.ignore_result, bool):
        raise _fail(name, "ignore_result", f"must be true or false, got {r.ignore_result!r}")
    # A countdown is held by a worker like a retry's backoff, hence the same bound.
    for fld, top in (("expires", 7 * 24 * 3600.0), ("countdown", MAX_BACKOFF_SECONDS)):
        v = getattr(r, fld)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= top):
            raise _fail(name, fld, f"must be a number of seconds in (0, {top:g}], got {v!r}")
    if r.countdown is not None and r.expires is not None and r.expires <= r.countdown:
        raise _fail(name, "expires", f"({r.expires}) must be later than countdown ({r.countdown}): it would never run")


ORDER_AND_POSITION = ("order.*", "position.*")
DEFAULT_ROUTES: tuple[Route, ...] = (
    Route("state", STATE_TASK, STATE_QUEUE, ORDER_AND_POSITION,
          retry=RetryPolicy(max_retries=8, backoff=0.5, backoff_max=30.0)),
    Route("risk", RISK_TASK, RISK_QUEUE,
          ("order.created", "order.modified", "order.filled", "order.partially_filled",
           "position.opened", "position.modified", "position.partially_closed", "position.closed")),
    Route("notify", NOTIFY_TASK, NOTIFY_QUEUE,
          ("risk.*", "order.rejected", "trade.failed", "position.closed"),
          retry=RetryPolicy(max_retries=5, backoff=2.0, backoff_max=300.0)),
)  # fmt: skip


class RoutingTable:
    """An ordered set of routes with unique names. ``routes_for`` is cached per (type, symbol)."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._routes: dict[str, Route] = {}
        self._cache: dict[tuple[str, str], tuple[Route, ...]] = {}
        for r in routes:
            self.add(r)

    @classmethod
    def default(cls) -> RoutingTable:
        """The default routes; the state task's route also takes the registered types with a state effect."""
        effects = tuple(spec.event_type.value for spec in custom_specs() if spec.effect is not None)
        return cls(
            replace(r, event_types=r.event_types + effects) if r.task == STATE_TASK else r for r in DEFAULT_ROUTES
        )

    def add(self, route: Route) -> RoutingTable:
        if not isinstance(route, Route):
            raise RoutingError(f"expected a Route, got {type(route).__name__}")
        if route.name in self._routes:
            raise _fail(route.name, "name", "is used by another route")
        self._routes[route.name] = route
        self._cache.clear()
        return self

    def remove(self, name: str) -> RoutingTable:
        if self._routes.pop(name, None) is None:
            raise _fail(name, "name", "is not in the table")
        self._cache.clear()
        return self

    def get(self, name: str) -> Route | None:
        return self._routes.get(name)

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(self._routes.values())

    @property
    def queues(self) -> tuple[str, ...]:
        """Every queue a route or beat uses, defaults first."""
        return tuple(dict.fromkeys((*QUEUES, *(r.queue for r in self._routes.values() if r.queue))))

    def routes_for(self, event: TradeEvent | tuple[str, str]) -> tuple[Route, ...]:
        """Routes matching an event (or an ``(event_type, symbol)`` pair), in table order."""
        key = event if isinstance(event, tuple) else (event.event_type.value, event.symbol)
        hit = self._cache.get(key)
        if hit is None:
            hit = tuple(r for r in self._routes.values() if r.matches(*key))
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._routes.values())

    def __len__(self) -> int:
        return len(self._routes)

    # --- configuration files ---------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path) -> RoutingTable:
        """Load ``.json`` or ``.toml``: ``{"include_defaults": true, "routes": [{...}, ...]}``."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise RoutingError(f"routing file {str(p)!r}: cannot read ({e.strerror})") from None
        try:
            data = tomllib.loads(raw.decode()) if p.suffix == ".toml" else json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise RoutingError(f"routing file {str(p)!r}: not valid {p.suffix[1:] or 'JSON'}: {e}") from None
        return cls.from_config(data, source=str(p))

    @classmethod
    def from_config(cls, data: Any, source: str = "config") -> RoutingTable:
        if not isinstance(data, Mapping):
            raise RoutingError(f"{source}: expected a table with a 'routes' list")
        unknown = set(data) - {"include_defaults", "routes", "disable"}
        if unknown:
            raise RoutingError(f"{source}: unknown key(s) {sorted(unknown)}")
        table = cls.default() if data.get("include_defaults", True) else cls()
        for name in data.get("disable", ()):
            table.remove(name)
        rules = data.get("routes", [])
        if not isinstance(rules, list):
            raise RoutingError(f"{source}: 'routes' must be a list")
        for i, rule in enumerate(rules):
            table.add(route_from_dict(rule, where=f"{source} rule #{i + 1}"))
        return table

    def to_config(self) -> dict[str, Any]:
        """The whole table as routes-file data (``from_config`` builds it back), defaults included."""
        return {"include_defaults": False, "routes": [route_to_dict(r) for r in self._routes.values()]}

    def to_file(self, path: str | Path) -> Path:
        """Write the table as a JSON routes file: how routes built in Python reach the workers (point
        TRADEBUS_ROUTES_FILE at it for publishers and workers alike)."""
        p = Path(path)
        if p.suffix != ".json":
            raise RoutingError(f"routing file {str(p)!r}: to_file writes JSON, name it *.json")
        p.write_text(json.dumps(self.to_config(), indent=2) + "\n")
        return p


_ROUTE_FIELDS = {f.name for f in fields(Route)}
_RETRY_FIELDS = {f.name for f in fields(RetryPolicy)}


def route_to_dict(route: Route) -> dict[str, Any]:
    """A route as a routes-file rule (unset options left out)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(route).items() if v is not None}


def route_from_dict(rule: Any, where: str = "rule") -> Route:
    """Build a Route from a config mapping; errors name the rule and the field."""
    if not isinstance(rule, Mapping):
        raise RoutingError(f"{where}: expected a table, got {type(rule).__name__}")
    label = f"{where} ({rule.get('name')!r})" if "name" in rule else where
    unknown = set(rule) - _ROUTE_FIELDS
    if unknown:
        raise RoutingError(f"{label}: unknown field(s) {sorted(unknown)}")
    missing = {"name", "task"} - set(rule)
    if missing:
        raise RoutingError(f"{label}: missing field(s) {sorted(missing)}")
    kw = dict(rule)
    for fld in ("event_types", "symbols"):
        if fld in kw:
            v = kw[fld]
            kw[fld] = (v,) if isinstance(v, str) else tuple(v) if isinstance(v, list) else v
    retry = kw.get("retry", {})
    if not isinstance(retry, Mapping) or set(retry) - _RETRY_FIELDS:
        raise RoutingError(f"{label}: retry must be a table with {sorted(_RETRY_FIELDS)}, got {retry!r}")
    kw["retry"] = RetryPolicy(**retry)
    try:
        return Route(**kw)
    except RoutingError as e:
        raise RoutingError(f"{where}: {e}") from None
