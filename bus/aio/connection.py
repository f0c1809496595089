"""Connections of the asyncio bus: a redis.asyncio client with the blocking client's options
(bus/core/connection.py: ``client_options``), a Sentinel master's included, its unpooled connections,
and the blocking twin a dispatcher is attached to."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.backoff import ExponentialBackoff

from bus.aio.cluster import cluster_raw_connection, make_async_cluster_client
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


def make_async_client(url: str, settings: Settings, *, retries: int = BUS_RETRIES) -> redis.asyncio.Redis:
    """A redis.asyncio client with the settings' timeouts, keepalive, health checks, TLS and retries; a
    Sentinel master's, or for ``redis+cluster://`` a redis.asyncio RedisCluster (typed as a Redis, as the
    blocking factory does: it serves every command the bus sends, each naming keys of one {symbol} slot)."""
    retry = AsyncRetry(ExponentialBackoff(cap=RETRY_CAP, base=RETRY_BASE), retries)
    topology = parse_topology(url) if is_topology_url(url) else None
    if topology is not None and topology.kind == "cluster":
        return make_async_cluster_client(topology, url, settings, retry)  # type: ignore[return-value]
    kw = client_options(url, settings)
    kw["retry"] = retry
    if topology is not None:
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
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)  # a Cluster has no pool
    for sentinel in manager.sentinels if manager is not None else ():
        await sentinel.aclose()


def raw_async_connection(client: redis.asyncio.Redis, timeout: float | None) -> Any:
    """A new, unpooled asyncio connection with the client's settings and no retries (pub/sub, PING); on a
    Cluster, to the next node (bus.aio.cluster: await ``read_nodes`` before)."""
    retry = AsyncRetry(ExponentialBackoff(), 0)
    if isinstance(client, RedisCluster):
        return cluster_raw_connection(client, timeout, retry)
    pool = client.connection_pool
    return pool.connection_class(**unpooled_options(pool.connection_kwargs, timeout, retry))


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
