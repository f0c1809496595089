"""The asyncio bus on a Redis Cluster (``redis+cluster://``): its redis.asyncio RedisCluster client and the
node each unpooled connection (pub/sub, PING) goes to."""

from __future__ import annotations

import contextlib
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.exceptions import RedisClusterException

from bus.config import Settings
from bus.config.topology import Topology
from bus.core.connection import unpooled_options


def make_async_cluster_client(topology: Topology, url: str, settings: Settings, retry: AsyncRetry) -> RedisCluster:
    """A redis.asyncio RedisCluster with the settings' timeouts, keepalive, health checks, TLS and retries (the
    blocking bus's bus.core.connection.make_cluster_client, for asyncio)."""
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in topology.nodes],
        username=topology.username, password=topology.password,
        socket_connect_timeout=settings.redis_connect_timeout, socket_timeout=settings.redis_socket_timeout,
        socket_keepalive=True, health_check_interval=settings.redis_health_check_interval, retry=retry,
        decode_responses=False, ssl=topology.tls, **settings.ssl_options(url),
    )  # fmt: skip


def cluster_raw_connection(client: RedisCluster, timeout: float | None, retry: AsyncRetry) -> Any:
    """A new, unpooled connection to the next node of the slot map: any node hears every classic PUBLISH,
    and a subscriber whose node died reconnects to a live one (self-healing subscribers)."""
    nodes = sorted(client.get_nodes(), key=lambda n: n.name)
    if not nodes:
        raise redis.ConnectionError("the Redis Cluster client knows no node yet (await read_nodes first)")
    current = client.get_default_node()
    at = next((i for i, n in enumerate(nodes) if current is not None and n.name == current.name), -1)
    node = nodes[(at + 1) % len(nodes)]
    client.set_default_node(node)
    return node.connection_class(**unpooled_options(node.connection_kwargs, timeout, retry))


async def read_nodes(client: redis.asyncio.Redis) -> None:
    """On a Cluster, (re-)read its nodes and slot map before a new unpooled connection picks a node (a node
    that died is gone from it once its replica took over); nothing to do on one server."""
    if isinstance(client, RedisCluster):
        with contextlib.suppress(redis.RedisError, RedisClusterException, OSError):
            await client.initialize()  # the first time: the client learns its nodes on its first command
            await client.nodes_manager.initialize()


def connection_username(client: redis.asyncio.Redis) -> str | None:
    """The ACL user ``client`` connects as (for the message of a permission error)."""
    if isinstance(client, RedisCluster):
        nodes = client.get_nodes()
        return nodes[0].connection_kwargs.get("username") if nodes else None
    return client.connection_pool.connection_kwargs.get("username")  # type: ignore[no-any-return]
