"""Connections: a configured redis-py client, and unpooled connections for pub/sub and PING."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection, SentinelManagedSSLConnection

from bus.config import Settings
from bus.config.topology import Topology, is_topology_url, parse_topology
from bus.errors import BusConnectionError, ConfigError


def describe_server(url: str) -> str:
    """``host:port`` (or the socket path) of a Redis URL, never its password; a Sentinel or Cluster
    URL is described by its nodes (and the master's name)."""
    if is_topology_url(url):
        return parse_topology(url).where()
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


#: retries of a failed command on the bus's clients, 50 ms apart, doubling up to 0.5 s: a blip is ridden
#: out, a long outage surfaces as an error, not a hang (durable publish)
BUS_RETRIES = 2
#: a publish's task messages to a separate broker: fail at once, beat re-dispatches what stays pending
NO_RETRIES = 0


def make_client(
    url: str,
    settings: Settings,
    *,
    retries: int = BUS_RETRIES,
    connection: Mapping[str, Any] | None = None,
) -> redis.Redis:
    """A redis-py client with the settings' timeouts, keepalive, health checks and TLS options.

    ``retries``: how often a command that failed on a broken connection is re-sent (short exponential
    backoff). ``connection``: host, port, db... already parsed from ``url``, for a Celery broker URL
    that redis-py cannot read (``redis+socket://``, ``virtual_host``); ``url`` still selects TLS.
    A ``redis+sentinel://`` URL gives a client of the current master, ``redis+cluster://`` a RedisCluster.
    """
    kw = client_options(url, settings)
    kw["retry"] = Retry(ExponentialBackoff(cap=RETRY_CAP, base=RETRY_BASE), retries)
    if connection is not None:
        return redis.Redis(**connection, **kw)
    if is_topology_url(url):
        topology = parse_topology(url)
        if topology.kind == "cluster":
            # typed as a Redis: a RedisCluster serves every command the bus and the workers send (each
            # names keys of one {symbol} slot, or redis-py routes it); pools: node_pool
            return cast(redis.Redis, make_cluster_client(url, settings, retries=retries))
        return _sentinel_master(topology, kw)
    return redis.Redis.from_url(url, **kw)


#: backoff between retries of a failed command: RETRY_BASE seconds, doubling up to RETRY_CAP
RETRY_BASE, RETRY_CAP = 0.05, 0.5


def client_options(url: str, settings: Settings) -> dict[str, Any]:
    """Timeouts, keepalive, health checks and TLS of a bus client (blocking or asyncio), retry aside."""
    kw: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
        "health_check_interval": settings.redis_health_check_interval,
        "decode_responses": False,
    }
    if urlsplit(url).scheme != "unix":
        kw["socket_keepalive"] = True
    kw.update(settings.ssl_options(url))
    return kw


#: what a demoted master answers a write, alone or (in a Lua script's error) inside another error's text
DEMOTED_MASTER = "READONLY You can't write against a read only replica"


def is_demoted_master_error(error: BaseException) -> bool:
    """A write reached a master Sentinel has since demoted: the connection must ask the sentinels again.
    redis-py knows the plain READONLY reply; a write inside a Lua script (every publish, every drain)
    fails as "Error running script ... -READONLY ...", a plain ResponseError it leaves alone."""
    return isinstance(error, redis.ResponseError) and DEMOTED_MASTER in str(error)


class MasterConnection(SentinelManagedConnection):  # type: ignore[misc]
    """A connection to the Sentinel master that drops itself when the server it reached has been demoted
    (after a failover the old master answers, read-only, to a connection made from a sentinel's stale
    answer, or opened before the switch): the write fails as a connection error (BusConnectionError,
    which callers retry), and the next connect asks the sentinels for the new master."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as e:
            if is_demoted_master_error(e) and self.connection_pool.is_master:
                self.disconnect()
                raise redis.ConnectionError(f"the master was demoted: {e}") from e
            raise


class MasterSSLConnection(MasterConnection, SentinelManagedSSLConnection):  # type: ignore[misc]
    pass


def _sentinel_master(topology: Topology, kw: dict[str, Any]) -> redis.Redis:
    """A client of the master Sentinel currently names: each new connection asks the sentinels, so
    after a failover the next attempt (a retry, or the caller's) reaches the new master."""
    sentinel_kw, master_kw = sentinel_options(topology, kw)
    assert topology.service_name is not None  # parse_topology: a Sentinel URL always names its master
    sentinel = Sentinel(list(topology.nodes), sentinel_kwargs=sentinel_kw)
    # our connection class replaces the one SentinelConnectionPool picks by the "ssl" flag
    connection_class = MasterSSLConnection if master_kw.pop("ssl", False) else MasterConnection
    return sentinel.master_for(
        topology.service_name, redis_class=redis.Redis, connection_class=connection_class, **master_kw
    )


def sentinel_options(topology: Topology, kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options of the sentinels and of the master's connections, from a client's options ``kw``
    (blocking or asyncio: bus.aio.connection builds its master the same way)."""
    ssl = {"ssl": True} if topology.tls else {}
    # the sentinels: the same timeouts and TLS, no password (Sentinel's own ACL is rarely the master's)
    sentinel_kw = {k: v for k, v in kw.items() if k.startswith(("socket_", "ssl"))} | ssl
    master_kw = {"db": topology.db, "username": topology.username, "password": topology.password, **kw, **ssl}
    return sentinel_kw, master_kw


def make_cluster_client(url: str, settings: Settings, *, retries: int = BUS_RETRIES) -> RedisCluster:
    """A Redis Cluster client (``redis+cluster://h:p[,h:p...]``) with the settings' timeouts, keepalive,
    TLS options and the same bounded retry policy as make_client."""
    topology = parse_topology(url)
    if topology.kind != "cluster":
        raise ConfigError(f"{topology.where()} is not a Redis Cluster URL")
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in topology.nodes],
        username=topology.username, password=topology.password,
        socket_connect_timeout=settings.redis_connect_timeout, socket_timeout=settings.redis_socket_timeout,
        socket_keepalive=True, health_check_interval=settings.redis_health_check_interval,
        retry=Retry(ExponentialBackoff(cap=RETRY_CAP, base=RETRY_BASE), retries), decode_responses=False,
        ssl=topology.tls, **settings.ssl_options(url),
    )  # fmt: skip


def node_pool(client: redis.Redis | RedisCluster) -> redis.ConnectionPool:
    """The pool whose settings a new unpooled connection copies: the client's own, or for a Redis
    Cluster one node's (pub/sub and PING may go to any node: a Cluster forwards every PUBLISH to all)."""
    if isinstance(client, RedisCluster):
        node = client.get_default_node()
        if node is None or node.redis_connection is None:
            raise redis.ConnectionError("the Redis Cluster client knows no node yet")
        return node.redis_connection.connection_pool
    return client.connection_pool


def slot_client(client: redis.Redis | RedisCluster, key: str) -> redis.Redis:
    """The client that serves ``key``'s slot: ``client`` itself, or on a Redis Cluster the plain client of
    the master holding that slot now (a log route's drain sends its WATCH and MULTI there: every key of
    one transaction is in the symbol's slot). A failover or resharding moves the slot: the next command
    there is refused with MOVED (or cannot connect), and ``refresh_slots`` lets the next call find it."""
    if not isinstance(client, RedisCluster):
        return client
    node = client.get_node_from_key(key)
    if node is None or node.redis_connection is None:
        raise redis.ConnectionError(f"the Redis Cluster client knows no master for {key!r}")
    return node.redis_connection


def _next_node(client: RedisCluster) -> None:
    refresh_slots(client)
    nodes = sorted(client.get_nodes(), key=lambda n: n.name)
    if not nodes:
        return
    current = client.get_default_node()
    at = next((i for i, n in enumerate(nodes) if current is not None and n.name == current.name), -1)
    client.set_default_node(nodes[(at + 1) % len(nodes)])


#: replies that mean a slot is not (or no longer) served where a command was sent: a Cluster failover or
#: resharding moved it, or a demoted master refuses writes. The command was refused: nothing was written.
SLOT_MOVED = (MovedError, AskError, ClusterDownError, TryAgainError, ReadOnlyError, MasterDownError)


def refresh_slots(client: redis.Redis | RedisCluster) -> None:
    """Re-read the Cluster's slot map (after a MOVED or a lost master); a no-op on one server. A Cluster
    that cannot answer now is left for the next call to ask again (redis-py's RedisClusterException is
    no RedisError: let through, it stopped a subscriber's rotation to the next live node)."""
    if isinstance(client, RedisCluster):
        with contextlib.suppress(redis.RedisError, RedisClusterException, OSError):
            client.nodes_manager.initialize()


def raw_connection(client: redis.Redis, timeout: float | None) -> Any:
    """A new, unpooled connection with the client's settings and no retries (pub/sub, PING). On a Cluster,
    each new connection goes to the next node of the slot map (re-read first): any node hears every
    classic PUBLISH, and a subscriber whose node died reconnects to a live one (self-healing subscribers)."""
    if isinstance(client, RedisCluster):
        _next_node(client)
    pool = node_pool(client)
    return pool.connection_class(**unpooled_options(pool.connection_kwargs, timeout, Retry(ExponentialBackoff(), 0)))


def unpooled_options(pool_kwargs: Mapping[str, Any], timeout: float | None, retry: Any) -> dict[str, Any]:
    """A pool's connection arguments for a connection of its own: ``retry`` (none, for the callers
    here), no health-check PING of redis-py's (the subscriber runs its own), RESP2, ``timeout``."""
    kw = dict(pool_kwargs)
    kw.update(retry=retry, health_check_interval=0, protocol=2)
    if timeout is not None:
        kw.update(socket_timeout=timeout, socket_connect_timeout=timeout)
    return kw


class HeldConnection:
    """A connection a publisher keeps from ``client``'s pool between commands, for its one-command
    publishes (one EVALSHA each). Taking a connection from a redis-py 8 pool and giving it back costs
    ~20 us a command (the pool's lock, a readiness poll of the socket, four observability counters):
    about a sixth of a publish's whole round trip on loopback. Commands sent here keep what matters of
    ``execute_command``: the client's retry policy (a broken connection is dropped and the command re-sent,
    ``BUS_RETRIES``), its health checks, error replies raised (NOSCRIPT as NoScriptError). Replies are
    raw (no response callbacks): callers send only scripts, whose replies have none. A command that finds
    the connection busy (another thread publishing), and every command of a Cluster, Sentinel or asyncio
    client (bus/aio/connection.py has its own), goes through ``client.execute_command`` instead."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        # A blocking client of one server, not a RedisCluster nor an asyncio client; and not a Sentinel
        # master's: its pool moves the connections it hands out to a new master as a failover happens (tried:
        # a held connection kept writing to the old master, whose writes a failover then loses).
        pool = client.connection_pool if isinstance(client, redis.Redis) else None
        self.pool: redis.ConnectionPool | None = None if isinstance(pool, SentinelConnectionPool) else pool
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = os.getpid()

    def execute_command(self, *args: Any) -> Any:
        if self.pool is None or not self._lock.acquire(blocking=False):
            return self.client.execute_command(*args)
        try:
            conn = self._conn
            if conn is None or self._pid != os.getpid():  # a forked child never shares its parent's socket
                conn = self._conn = self.pool.get_connection()
                self._pid = os.getpid()
            return conn.retry.call_with_retry(lambda: _send(conn, args), lambda _error: conn.disconnect())
        finally:
            self._lock.release()

    def close(self) -> None:
        """Give the connection back to the pool (the bus's close; the client may be the caller's)."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self.pool is not None and self._pid == os.getpid():
                self.pool.release(conn)


def _send(conn: Any, args: tuple[Any, ...]) -> Any:
    conn.send_packed_command(conn.pack_command(*args))
    return conn.read_response()


def unreachable(where: str, e: Exception) -> BusConnectionError:
    """The error a bus raises when Redis at ``where`` does not answer (durable publish: never a silent drop)."""
    return BusConnectionError(
        f"Cannot connect to Redis at {where} ({type(e).__name__}: {e}). Is the Redis container running?"
    )


def _client_where(client: redis.Redis) -> str:
    if isinstance(client, RedisCluster):
        return "cluster " + ",".join(sorted(node.name for node in client.get_nodes()))
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        return f"sentinel {pool.service_name}"
    kw = pool.connection_kwargs
    if "path" in kw:
        return str(kw["path"])
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
