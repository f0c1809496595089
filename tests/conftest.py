"""Shared fixtures: a real Redis (the machine's, or an embedded one), a key prefix per test, servers
that a test owns and may stop/restart.

Tests never FLUSHALL/FLUSHDB the shared server: each test works under its own key prefix and deletes
only its own keys afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from bus.config import LoadEnvironmentVariables, Settings
from bus.core.bus import RedisEventBus
from bus.core.keyspace import delete_matching
from bus.embedded import EmbeddedRedis, redis_answers

DEFAULT_URL = "redis://127.0.0.1:6379/0"
# Databases the test suite uses on the shared server (bus / Celery broker), away from the default 0/1.
TEST_BUS_DB = 9
TEST_BROKER_DB = 10


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL if set; else the local server if it answers; else a real embedded redis-server."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    local = f"redis://127.0.0.1:6379/{TEST_BUS_DB}"
    if redis_answers(local):
        yield local
        return
    with EmbeddedRedis() as server:
        yield server.url.rsplit("/", 1)[0] + f"/{TEST_BUS_DB}"


@pytest.fixture(scope="session")
def broker_url(redis_url: str) -> str:
    """Celery broker for tests: the same Redis server, its own database."""
    return redis_url.rsplit("/", 1)[0] + f"/{TEST_BROKER_DB}"


@pytest.fixture
def key_prefix(redis_url: str, broker_url: str) -> Iterator[str]:
    """A fresh key prefix for one test; every key under it (bus and broker db) is deleted afterwards."""
    prefix = f"tbtest-{uuid.uuid4().hex[:10]}"
    yield prefix
    delete_prefix(redis_url, prefix)
    delete_prefix(broker_url, prefix)


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        delete_matching(client, f"{prefix}*")  # also "{prefix}-other" tenants
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str, broker_url: str, key_prefix: str) -> Settings:
    """Settings pointing at the test Redis, under this test's key prefix (broker queues included)."""
    return LoadEnvironmentVariables(
        None,
        redis_url=redis_url,
        celery_broker_url=broker_url,
        key_prefix=key_prefix,
        broker_key_prefix=f"{key_prefix}:",
    )


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server this test owns (AOF on), free to stop, kill and restart."""
    with EmbeddedRedis(appendonly=True) as server:
        yield server


@pytest.fixture(params=["sync", "async"])
def make_bus(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """``make_bus(url, **kw)``: a RedisEventBus, or an AsyncRedisEventBus behind the blocking API
    (tests/support_aio.py), so one test covers both; every bus built is closed after the test."""
    from support_aio import AsyncBusAdapter

    kind = RedisEventBus if request.param == "sync" else AsyncBusAdapter
    built: list[Any] = []

    def make(url: str, **kw: Any) -> Any:
        built.append(kind(url, **kw))
        return built[-1]

    yield make
    for bus in built:
        bus.close()
