"""Connections of the asyncio bus: a redis.asyncio client with the blocking client's options
(bus/core/connection.py: ``client_options``), its unpooled connections, and the blocking twin a
dispatcher is attached to."""

from __future__ import annotations

import contextlib
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff

from bus.config import Settings
from bus.config.topology import is_topology_url, parse_topology
from bus.core.connection import BUS_RETRIES, RETRY_BASE, RETRY_CAP, client_options, make_client, unpooled_options
from bus.errors import ConfigError


def make_async_client(url: str, settings: Settings, *, retries: int = BUS_RETRIES) -> redis.asyncio.Redis:
    """A redis.asyncio client with the settings' timeouts, keepalive, health checks, TLS and retries;
    ``redis+cluster://`` gives a redis.asyncio RedisCluster (typed as a Redis, as the blocking factory does:
    it serves every command the bus sends, each naming keys of one {symbol} slot)."""
    retry = AsyncRetry(ExponentialBackoff(cap=RETRY_CAP, base=RETRY_BASE), retries)
    if is_topology_url(url):
        topology = parse_topology(url)
        if topology.kind != "cluster":
            raise ConfigError(f"the asyncio bus takes one server or a Redis Cluster, not {topology.where()}")
        return RedisCluster(  # type: ignore[return-value]
            startup_nodes=[ClusterNode(host, port) for host, port in topology.nodes],
            username=topology.username, password=topology.password,
            socket_connect_timeout=settings.redis_connect_timeout, socket_timeout=settings.redis_socket_timeout,
            socket_keepalive=True, health_check_interval=settings.redis_health_check_interval, retry=retry,
            decode_responses=False, ssl=topology.tls, **settings.ssl_options(url),
        )  # fmt: skip
    kw = client_options(url, settings)
    kw["retry"] = retry
    return redis.asyncio.Redis.from_url(url, **kw)


def raw_async_connection(client: redis.asyncio.Redis, timeout: float | None) -> Any:
    """A new, unpooled asyncio connection with the client's settings and no retries (pub/sub, PING). On a
    Cluster, each new connection goes to the next node (any node hears every classic PUBLISH; a subscriber
    whose node died reconnects to a live one)."""
    retry = AsyncRetry(ExponentialBackoff(), 0)
    if isinstance(client, RedisCluster):
        node = _next_node(client)
        return node.connection_class(**unpooled_options(node.connection_kwargs, timeout, retry))
    pool = client.connection_pool
    return pool.connection_class(**unpooled_options(pool.connection_kwargs, timeout, retry))


async def read_nodes(client: redis.asyncio.Redis) -> None:
    """On a Cluster, (re-)read its nodes and slot map before ``raw_async_connection`` picks a node (a node
    that died is gone from it once its replica took over); nothing to do on one server."""
    if isinstance(client, RedisCluster):
        with contextlib.suppress(redis.RedisError, OSError):
            await client.initialize()  # the first time: the client learns its nodes on its first command
            await client.nodes_manager.initialize()


def connection_username(client: redis.asyncio.Redis) -> str | None:
    """The ACL user ``client`` connects as (for the message of a permission error)."""
    if isinstance(client, RedisCluster):
        nodes = client.get_nodes()
        return nodes[0].connection_kwargs.get("username") if nodes else None
    return client.connection_pool.connection_kwargs.get("username")  # type: ignore[no-any-return]


def _next_node(client: RedisCluster) -> ClusterNode:
    nodes = sorted(client.get_nodes(), key=lambda n: n.name)
    if not nodes:
        raise redis.ConnectionError("the Redis Cluster client knows no node yet (await its first command)")
    current = client.get_default_node()
    at = next((i for i, n in enumerate(nodes) if current is not None and n.name == current.name), -1)
    client.set_default_node(nodes[(at + 1) % len(nodes)])
    return nodes[(at + 1) % len(nodes)]


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
