"""Redis topologies by URL: one server, a Sentinel-managed master, or a Cluster.

- ``redis://``, ``rediss://``, ``unix://``: one server (redis-py's own URL forms).
- ``redis+sentinel://[user:pass@]host:port[,host:port...]/service_name[/db]`` (``rediss+sentinel://``
  for TLS): the master Sentinel names ``service_name``. The password is the master's; the sentinels are
  asked without one. (kombu's own ``sentinel://h:p/db;sentinel://h:p/db`` spelling, which names no
  master, is accepted for the Celery broker only: Settings.broker_master_name supplies the name.)
- ``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster://``): a Redis Cluster;
  any of its nodes will do, the client discovers the rest. A Cluster has only database 0.

Parsed here (not in redis-py, which reads neither form) so Settings can check a URL when it is read
and derive the Celery broker URL in kombu's spelling (``sentinel://h:p/db;sentinel://h:p/db`` with the
master name as a transport option).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
#: kombu's spelling of a Sentinel broker URL
KOMBU_SENTINEL_SCHEME = "sentinel"
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SINGLE_SCHEMES = ("redis", "rediss", "unix")
#: Sentinel's own port, when a sentinel address names none
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class Topology:
    """A multi-node Redis deployment read from a URL (never logged whole: it holds the password)."""

    kind: Literal["sentinel", "cluster"]
    nodes: tuple[tuple[str, int], ...]
    service_name: str | None = None  # Sentinel: the monitored master's name
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def where(self) -> str:
        """What to name in logs and errors: the nodes and the service, no credentials."""
        nodes = ",".join(f"{h}:{p}" for h, p in self.nodes)
        return f"sentinel {self.service_name}@{nodes}" if self.kind == "sentinel" else f"cluster {nodes}"

    def kombu_url(self, db: int) -> str:
        """This Sentinel master as kombu's broker URL (``sentinel://...;sentinel://...``), database ``db``;
        kombu takes the master name separately, as the ``master_name`` transport option."""
        if self.kind != "sentinel":
            raise ValueError("a Redis Cluster cannot be a Celery broker: kombu has no Cluster transport")
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return ";".join(f"sentinel://{auth}{h}:{p}/{db}" for h, p in self.nodes)


def is_topology_url(url: str) -> bool:
    return urlsplit(url).scheme in SENTINEL_SCHEMES + CLUSTER_SCHEMES


def parse_topology(url: str) -> Topology:
    """Read a Sentinel or Cluster URL; ValueError (naming no password) when it is malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SENTINEL_SCHEMES + CLUSTER_SCHEMES:
        raise ValueError(f"not a Sentinel or Cluster URL: scheme {scheme!r}")
    netloc, _, path = rest.partition("/")
    path, _, _query = path.partition("?")
    auth, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinel = scheme in SENTINEL_SCHEMES
    nodes = tuple(_node(h, SENTINEL_PORT if sentinel else 6379) for h in hosts.split(",") if h)
    if not nodes:
        raise ValueError(f"{scheme}:// needs at least one host:port")
    segments = [s for s in path.split("/") if s]
    tls = scheme.startswith("rediss")
    if not sentinel:
        if segments not in ([], ["0"]):
            raise ValueError("a Redis Cluster has only database 0: the URL must not name another")
        return Topology("cluster", nodes, username=username, password=password, tls=tls)
    if not segments or len(segments) > 2:
        raise ValueError(f"{scheme}:// needs the master's name: {scheme}://host:port[,host:port]/service_name[/db]")
    if len(segments) == 2 and not segments[1].isdigit():
        raise ValueError(f"database must be a number, not {segments[1]!r}")
    db = int(segments[1]) if len(segments) == 2 else 0
    return Topology("sentinel", nodes, unquote(segments[0]), db, username, password, tls)


def _node(text: str, default_port: int) -> tuple[str, int]:
    # urlsplit reads one host[:port] (and [v6]:port) the way every other URL here is read
    parts = urlsplit(f"//{text}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not parts.hostname:
        raise ValueError(f"bad host in {text!r}")
    return parts.hostname, port or default_port
