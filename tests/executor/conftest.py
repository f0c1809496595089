"""The executor tests' buses: real RedisEventBus instances under the test's key prefix."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from bus.core.bus import RedisEventBus


@pytest.fixture
def make_bus(key_prefix: str) -> Iterator[Callable[[str], RedisEventBus]]:
    """``make_bus(url)``: a RedisEventBus on ``url`` under this test's key prefix; closed afterwards."""
    buses: list[RedisEventBus] = []

    def make(url: str) -> RedisEventBus:
        buses.append(RedisEventBus(url, key_prefix=key_prefix))
        return buses[-1]

    yield make
    for bus in buses:
        bus.close()


@pytest.fixture
def event_bus(redis_url: str, make_bus: Callable[[str], RedisEventBus]) -> RedisEventBus:
    """The bus on the test Redis."""
    return make_bus(redis_url)
