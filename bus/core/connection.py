"""Connections: a configured redis-py client, and unpooled connections for pub/sub and PING."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from bus.config import Settings


def describe_server(url: str) -> str:
    """``host:port`` (or the socket path) of a Redis URL, never its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def make_client(url: str, settings: Settings) -> redis.Redis:
    """A redis-py client with the settings' timeouts, keepalive, health checks and TLS options."""
    kw: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
        "health_check_interval": settings.redis_health_check_interval,
        # few, fast retries: a long outage must surface as an error, not a hang (G1)
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        "decode_responses": False,
    }
    if urlsplit(url).scheme != "unix":
        kw["socket_keepalive"] = True
    kw.update(settings.ssl_options())
    return redis.Redis.from_url(url, **kw)


def raw_connection(client: redis.Redis, timeout: float | None) -> Any:
    """A new, unpooled connection with the client's settings and no retries (pub/sub, PING)."""
    pool = client.connection_pool
    kw = dict(pool.connection_kwargs)
    kw.update(retry=Retry(ExponentialBackoff(), 0), health_check_interval=0, protocol=2)
    if timeout is not None:
        kw.update(socket_timeout=timeout, socket_connect_timeout=timeout)
    return pool.connection_class(**kw)


def _client_where(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return str(kw["path"])
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
