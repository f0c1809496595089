"""The bus under test: a real RedisEventBus on the test Redis, under the test's key prefix."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bus.core.bus import RedisEventBus


def _bus(redis_url: str, key_prefix: str) -> Iterator[RedisEventBus]:
    b = RedisEventBus(redis_url, key_prefix=key_prefix)
    yield b
    b.close()


@pytest.fixture
def bus(redis_url: str, key_prefix: str) -> Iterator[RedisEventBus]:
    yield from _bus(redis_url, key_prefix)


@pytest.fixture
def publisher(redis_url: str, key_prefix: str) -> Iterator[RedisEventBus]:
    """A second bus on the same keys, publishing while ``bus`` subscribes."""
    yield from _bus(redis_url, key_prefix)
