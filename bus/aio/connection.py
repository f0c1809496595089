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
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedConnection, SentinelManagedSSLConnection
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


class AsyncHeldConnection:
    """bus.core.connection.HeldConnection for asyncio: the connection the bus's single publishes are sent
    on, kept from the client's pool between them (the pool's hand-over is ~20 us a command here too: +15%
    publishes/s). One command at a time: a publish that finds it busy (another task's publish awaiting its
    reply) goes through the pool, as does every command of a Cluster or Sentinel client. Retries, health
    checks and error replies as ``execute_command``; a publish cancelled while awaiting its reply leaves
    the connection dropped (redis-py's reads disconnect on any interruption), so no later publish reads
    another's reply. Used from the bus's one event loop, as the client itself is."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        pool = client.connection_pool if isinstance(client, redis.asyncio.Redis) else None
        self.pool: Any = None if isinstance(pool, SentinelConnectionPool) else pool
        self._busy = False
        self._conn: Any = None

    async def execute_command(self, *args: Any) -> Any:
        if self.pool is None or self._busy:
            return await self.client.execute_command(*args)
        self._busy = True
        try:
            conn = self._conn
            if conn is None:
                conn = self._conn = await self.pool.get_connection()
            return await conn.retry.call_with_retry(lambda: _send(conn, args), lambda _error: conn.disconnect())
        finally:
            self._busy = False

    async def aclose(self) -> None:
        """Give the connection back to the pool (the bus's aclose; the client may be the caller's)."""
        conn, self._conn = self._conn, None
        if conn is not None and self.pool is not None:
            await self.pool.release(conn)


async def _send(conn: Any, args: tuple[Any, ...]) -> Any:
    await conn.send_packed_command(conn.pack_command(*args))
    return await conn.read_response()


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
