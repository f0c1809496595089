"""kombu's Redis transport, minus one redis-py client construction per broker operation.

kombu 5.7's ``Channel.conn_or_acquire()`` builds a new ``redis.Redis`` (with ``global_keyprefix``, a
``PrefixedStrictRedis``) around the channel's connection pool for every operation it is not handed a
client for: each task's QoS bookkeeping after BRPOP (MULTI ZADD+HSET) and each ack (MULTI ZREM+HDEL).
The constructor copies redis-py's response-callback table; profiled on a solo worker here, it was
10-19% of the worker's CPU per task. A client holds no connection of its own (commands check one out
of the pool), so this channel keeps one per pool and rebuilds it when kombu replaces the pool (after a
connection loss ``_disconnect_pools`` drops it). Messages, acks and their order are unchanged.

Used for ``redis://`` brokers only (see celery_app.config); ``rediss://`` keeps kombu's transport,
whose scheme name drives its TLS defaults.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    _sync_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        cached = self._sync_client
        if cached is None or cached.connection_pool is not self.pool:
            cached = self._sync_client = self._create_client()
        yield cached


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel
