"""What the bus runs on: one server, a Sentinel-managed master or a Cluster; each master's replicas and
their lag, and on a Cluster which master holds which symbols' slots (``tradebus doctor``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.sentinel import SentinelConnectionPool

from bus.core.keys import Keys


@dataclass(frozen=True)
class Replica:
    address: str
    state: str  # "online" once in sync
    lag_seconds: int  # since its last acknowledgement (INFO's lag=)
    behind_bytes: int  # master offset minus the replica's


@dataclass(frozen=True)
class Master:
    address: str
    replicas: tuple[Replica, ...]
    slots: int | None = None  # Cluster: how many of the 16384 hash slots it serves
    symbols: tuple[str, ...] = ()  # Cluster: the known symbols whose keys live on it

    @property
    def online_replicas(self) -> int:
        return sum(1 for r in self.replicas if r.state == "online")


@dataclass(frozen=True)
class Deployment:
    kind: str  # "single", "sentinel" or "cluster"
    masters: tuple[Master, ...]
    sentinel_service: str | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = []
        for m in self.masters:
            replicas = ", ".join(f"{r.address} {r.state}, lag {r.lag_seconds}s, {r.behind_bytes} B behind"
                                 for r in m.replicas) or "no replicas"  # fmt: skip
            where = f"{m.address} ({m.slots} slots; symbols: {', '.join(m.symbols) or '-'})" if m.slots else m.address
            parts.append(f"master {where}: {replicas}")
        head = {"single": "one Redis", "cluster": f"Redis Cluster, {len(self.masters)} masters"}.get(
            self.kind, f"Sentinel service {self.sentinel_service}"
        )
        return f"{head}; " + "; ".join(parts)


def deployment(client: redis.Redis, keys: Keys) -> Deployment:
    """Ask the servers (INFO replication; CLUSTER SHARDS on a Cluster) what the bus runs on."""
    if isinstance(client, RedisCluster):
        return _cluster(client, keys)
    pool = client.connection_pool
    master = _master(client, _address(pool))
    if isinstance(pool, SentinelConnectionPool):
        return Deployment("sentinel", (master,), sentinel_service=pool.service_name)
    return Deployment("single", (master,))


def _master(node: Any, address: str, slots: int | None = None, symbols: tuple[str, ...] = ()) -> Master:
    info = node.info("replication")
    offset = int(info.get("master_repl_offset", 0))
    replicas = []
    for i in range(int(info.get("connected_slaves", 0))):
        r = info.get(f"slave{i}", {})
        replicas.append(Replica(f"{r.get('ip')}:{r.get('port')}", str(r.get("state", "?")),
                                int(r.get("lag", 0)), max(0, offset - int(r.get("offset", 0)))))  # fmt: skip
    return Master(address, tuple(replicas), slots, symbols)


def _cluster(client: RedisCluster, keys: Keys) -> Deployment:
    symbols = sorted(s.decode() if isinstance(s, bytes) else s for s in client.smembers(keys.symbols()))
    by_node: dict[str, list[str]] = {}
    for symbol in symbols:
        by_node.setdefault(client.get_node_from_key(keys.log(symbol)).name, []).append(symbol)
    slots: dict[str, int] = {}
    # redis-py parses CLUSTER SLOTS as {(first, last): {"primary": (host, port), "replicas": [...]}}
    for (first, last), holders in cast(dict[Any, Any], client.cluster_slots()).items():
        host, port = holders["primary"]
        name = f"{host.decode() if isinstance(host, bytes) else host}:{port}"
        slots[name] = slots.get(name, 0) + int(last) - int(first) + 1
    masters = []
    for node in sorted(client.get_primaries(), key=lambda n: n.name):
        held = tuple(by_node.get(node.name, ()))
        masters.append(_master(client.get_redis_connection(node), node.name, slots.get(node.name, 0), held))
    return Deployment("cluster", tuple(masters))


def _address(pool: Any) -> str:
    if isinstance(pool, SentinelConnectionPool):
        host, port = pool.get_master_address()
        return f"{host}:{port}"
    kw = pool.connection_kwargs
    return str(kw["path"]) if "path" in kw else f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
