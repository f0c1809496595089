"""Connections: a configured redis-py client, and unpooled connections for pub/sub and PING."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from bus.config import Settings
from bus.errors import BusConnectionError


def describe_server(url: str) -> str:
    """``host:port`` (or the socket path) of a Redis URL, never its password."""
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
    """
    kw = client_options(url, settings)
    kw["retry"] = Retry(ExponentialBackoff(cap=RETRY_CAP, base=RETRY_BASE), retries)
    if connection is not None:
        return redis.Redis(**connection, **kw)
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


def raw_connection(client: redis.Redis, timeout: float | None) -> Any:
    """A new, unpooled connection with the client's settings and no retries (pub/sub, PING)."""
    pool = client.connection_pool
    return pool.connection_class(**unpooled_options(pool.connection_kwargs, timeout, Retry(ExponentialBackoff(), 0)))


def unpooled_options(pool_kwargs: Mapping[str, Any], timeout: float | None, retry: Any) -> dict[str, Any]:
    """A pool's connection arguments for a connection of its own: ``retry`` (none, for the callers
    here), no health-check PING of redis-py's (the subscriber runs its own), RESP2, ``timeout``."""
    kw = dict(pool_kwargs)
    kw.update(retry=retry, health_check_interval=0, protocol=2)
    if timeout is not None:
        kw.update(socket_timeout=timeout, socket_connect_timeout=timeout)
    return kw


def unreachable(where: str, e: Exception) -> BusConnectionError:
    """The error a bus raises when Redis at ``where`` does not answer (durable publish: never a silent drop)."""
    return BusConnectionError(
        f"Cannot connect to Redis at {where} ({type(e).__name__}: {e}). Is the Redis container running?"
    )


def _client_where(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return str(kw["path"])
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
