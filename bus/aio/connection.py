"""Connections of the asyncio bus: a redis.asyncio client with the blocking client's options
(bus/core/connection.py: ``client_options``), a Sentinel master's included, its unpooled connections,
and the blocking twin a dispatcher is attached to."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.backoff import ExponentialBackoff

from bus.config import Settings
from bus.config.topology import is_topology_url, parse_topology
from bus.core.connection import (
    BUS_RETRIES,
    RETRY_BASE,
    RETRY_CAP,
    client_options,
    is_demoted_master_error,
    make_client,
    sentinel_options,
    unpooled_options,
)
from bus.errors import ConfigError


def make_async_client(url: str, settings: Settings, *, retries: int = BUS_RETRIES) -> redis.asyncio.Redis:
    """A redis.asyncio client with the settings' timeouts, keepalive, health checks, TLS and retries."""
    kw = client_options(url, settings)
    kw["retry"] = AsyncRetry(ExponentialBackoff(cap=RETRY_CAP, base=RETRY_BASE), retries)
    if is_topology_url(url):
        topology = parse_topology(url)
        if topology.kind != "sentinel":
            raise ConfigError(f"the asyncio bus does not run on a Redis Cluster ({topology.where()}) yet")
        # as the blocking bus's master (bus.core.connection): each new connection asks the sentinels
        # where the master is, so a retry or a reconnecting subscriber follows a failover
        sentinel_kw, master_kw = sentinel_options(topology, kw)
        assert topology.service_name is not None
        sentinel = AsyncSentinel(list(topology.nodes), sentinel_kwargs=sentinel_kw)
        # our connection class replaces the one SentinelConnectionPool picks by the "ssl" flag
        connection_class = MasterSSLConnection if master_kw.pop("ssl", False) else MasterConnection
        return sentinel.master_for(
            topology.service_name, redis_class=redis.asyncio.Redis, connection_class=connection_class, **master_kw
        )
    return redis.asyncio.Redis.from_url(url, **kw)


class MasterConnection(SentinelManagedConnection):  # type: ignore[misc]
    """bus.core.connection.MasterConnection for asyncio: a write that reached a demoted master drops the
    connection and fails as a connection error, so the next connect asks the sentinels."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except redis.ResponseError as e:
            if is_demoted_master_error(e) and self.connection_pool.is_master:
                await self.disconnect()
                raise redis.ConnectionError(f"the master was demoted: {e}") from e
            raise


class MasterSSLConnection(MasterConnection, SentinelManagedSSLConnection):  # type: ignore[misc]
    pass


async def close_async_client(client: redis.asyncio.Redis) -> None:
    """Close ``client`` and, for a Sentinel master's, its clients of the sentinels (asyncio warns of
    every connection left open when its loop ends)."""
    await client.aclose()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    for sentinel in manager.sentinels if manager is not None else ():
        await sentinel.aclose()


def raw_async_connection(client: redis.asyncio.Redis, timeout: float | None) -> Any:
    """A new, unpooled asyncio connection with the client's settings and no retries (pub/sub, PING)."""
    pool = client.connection_pool
    kw = unpooled_options(pool.connection_kwargs, timeout, AsyncRetry(ExponentialBackoff(), 0))
    return pool.connection_class(**kw)


def blocking_twin(client: redis.asyncio.Redis, settings: Settings) -> redis.Redis:
    """A blocking client for the server and database of ``client``, built with ``settings`` (TLS
    included): what a dispatcher is attached to (it decides from it whether task messages can join
    the publish transaction, and clears pending-dispatch entries with it from its worker thread)."""
    kw = client.connection_pool.connection_kwargs
    tls = issubclass(client.connection_pool.connection_class, redis.asyncio.SSLConnection)
    where = {k: kw[k] for k in ("host", "port", "db", "username", "password") if kw.get(k) is not None}
    if "path" in kw:
        where = {"unix_socket_path": kw["path"], **{k: v for k, v in where.items() if k != "host"}}
    if tls:
        where["ssl"] = True
    scheme = "unix" if "path" in kw else "rediss" if tls else "redis"
    return make_client(f"{scheme}://", settings, connection=where)
