"""The bus under test, of both kinds: a real RedisEventBus, or an AsyncRedisEventBus behind the blocking
API (tests/aio_adapter.py), on the test Redis under the test's key prefix."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bus.core.bus import RedisEventBus
from tests.aio_adapter import AsyncBusAdapter


@pytest.fixture(params=["sync", "async"])
def make_bus(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """``make_bus(url, **kw)``: a bus of this test's kind; every bus built is closed after the test."""
    kind = RedisEventBus if request.param == "sync" else AsyncBusAdapter
    built: list[Any] = []

    def make(url: str, **kw: Any) -> Any:
        built.append(kind(url, **kw))
        return built[-1]

    yield make
    for bus in built:
        bus.close()


@pytest.fixture
def bus(make_bus: Callable[..., Any], redis_url: str, key_prefix: str) -> Any:
    return make_bus(redis_url, key_prefix=key_prefix)


@pytest.fixture
def publisher(make_bus: Callable[..., Any], redis_url: str, key_prefix: str) -> Any:
    """A second bus on the same keys, publishing while ``bus`` subscribes."""
    return make_bus(redis_url, key_prefix=key_prefix)
