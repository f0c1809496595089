"""The environment `tradebus` commands run in: the test Redis under the test's key prefix, and a
private broker, so the task messages these tests enqueue are never taken by another test's worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bus.embedded import EmbeddedRedis
from tests.helpers import cli_env


@pytest.fixture(scope="module")
def private_broker() -> Iterator[str]:
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def env(redis_url: str, key_prefix: str, private_broker: str) -> dict[str, str]:
    return cli_env(REDIS_URL=redis_url, CELERY_BROKER_URL=private_broker, TRADEBUS_KEY_PREFIX=key_prefix)


@pytest.fixture
def symbol(key_prefix: str) -> str:
    # channels are not prefixed: a symbol of its own keeps this test's broadcasts apart from others'
    return f"T{key_prefix[-8:].upper()}"
