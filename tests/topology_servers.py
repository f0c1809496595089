"""Redis topologies a test starts and owns on free loopback ports with the machine's redis-server:
a Sentinel set (a master, a replica, three sentinels) and a 3-master Cluster. Never a shared server."""

from __future__ import annotations

import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bus.embedded import EmbeddedRedis, free_port, stop_process
from tests.helpers import wait_for

#: how quickly sentinels call a silent master down: short, so a failover takes a second or two
DOWN_AFTER_MS = 400
#: a master starts a (diskless) full sync at once: by default it waits 5 s for more replicas to share it,
#: which every replica's first sync and every rejoin paid
SYNC_AT_ONCE = ("--repl-diskless-sync-delay", "0")


def binary_or_skip(name: str = "redis-server") -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"no {name} on this machine: the topology tests start their own servers with it")
    return found


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    """A Sentinel set of this test's own (a plugin of tests/conftest.py): stopped afterwards."""
    topology = SentinelSet().start()
    yield topology
    topology.close()


class SentinelSet:
    """A master, one replica and three sentinels monitoring them as ``name``."""

    def __init__(self, name: str = "tbmaster", down_after_ms: int = DOWN_AFTER_MS) -> None:
        self.name = name
        #: a master silent this long is down: longer for tests whose load could stall a healthy one
        self.down_after_ms = down_after_ms
        self.binary = binary_or_skip()
        self.directory = Path(tempfile.mkdtemp(prefix="tradebus-sentinel-"))
        self.servers: dict[int, EmbeddedRedis] = {}  # by port: the master changes, the processes do not
        self.sentinels: list[tuple[int, subprocess.Popen[bytes]]] = []

    def start(self) -> SentinelSet:
        try:
            master = self._server()
            replica = self._server("--replicaof", "127.0.0.1", str(master.port))
            wait_for(lambda: replication_info(replica).get("master_link_status") == "up", 10, "replica in sync")
            # Each sentinel's file names the replica and the other two (what Sentinel itself writes there
            # once it has found them): found by INFO (every 10 s) and hello messages (every 2 s) instead,
            # a set took ~7 s to be ready for a failover.
            peers = [(free_port(), secrets.token_hex(20)) for _ in range(3)]  # port, 40-hex run id
            for port, myid in peers:
                self._sentinel(port, myid, master.port, replica.port, [p for p in peers if p[0] != port])
            # a failover needs every sentinel linked to the replica (its INFO read) and to the other two
            for port, _ in self.sentinels:
                s = self._sentinel_client(port)
                wait_for(lambda s=s: _linked(s.sentinel_slaves(self.name), 1), 10, "sentinel sees the replica")
                wait_for(lambda s=s: _linked(s.sentinel_sentinels(self.name), 2), 10, "sentinels see each other")
        except BaseException:
            self.close()
            raise
        return self

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p, _ in self.sentinels) + f"/{self.name}"

    def master_port(self) -> int:
        host, port = self._sentinel_client(self.sentinels[0][0]).sentinel_get_master_addr_by_name(self.name)
        return int(port)

    def master(self) -> EmbeddedRedis:
        return self.servers[self.master_port()]

    def replica(self) -> EmbeddedRedis:
        return next(s for port, s in self.servers.items() if port != self.master_port())

    def failover(self) -> int:
        """SENTINEL FAILOVER (a planned switch); returns the new master's port once it is master."""
        old = self.master_port()
        self._sentinel_client(self.sentinels[0][0]).execute_command("SENTINEL", "FAILOVER", self.name)
        return self.wait_for_new_master(old)

    def wait_for_new_master(self, old: int, timeout: float = 20) -> int:
        """The port of the master every sentinel names, once it is not ``old`` and acts as master."""

        def promoted() -> int | None:
            ports = {self._master_of(p) for p, _ in self.sentinels}
            if len(ports) != 1 or old in ports:
                return None
            port = ports.pop()
            return port if replication_info(self.servers[port]).get("role") == "master" else None

        return int(wait_for(promoted, timeout, "a new master"))

    def wait_for_online_replica(self, timeout: float = 30) -> None:
        """Until the current master lists a replica that is online (its sync done): what a publish with
        WAIT 1 needs. After SENTINEL FAILOVER the old master is still being turned into one for a while."""

        def online() -> bool:
            info = replication_info(self.master())
            return any(
                info.get(f"slave{i}", {}).get("state") == "online" for i in range(info.get("connected_slaves", 0))
            )

        wait_for(online, timeout, "an online replica of the new master")

    def role(self, port: int) -> str | None:
        """What the server on ``port`` says it is ("master", "slave"), None when it does not answer."""
        return replication_info(self.servers[port]).get("role")

    def failovers(self) -> int:
        """How many failovers the sentinels have run (the master's config epoch): a test that caused one
        can tell a spurious second one (a master too slow to answer under load) from its own."""
        info = self._sentinel_client(self.sentinels[0][0]).sentinel_master(self.name)
        return int(info.get("config-epoch", info.get("config_epoch", 0)))

    def kill_master(self) -> int:
        """SIGKILL the master process (a crash); returns its port."""
        port = self.master_port()
        self.servers[port].kill()
        return port

    def rejoin(self, port: int, timeout: float = 30) -> None:
        """Start the (killed) server on ``port`` again as a replica of the current master, as an operator
        restarts a failed master (Sentinel would convert it too, but only after ~8 s of it claiming to be
        master); returns once its link is up (its data replaced by the master's)."""
        self.servers[port].start()
        self.demote(port, timeout)

    def demote(self, port: int, timeout: float = 30) -> None:
        """REPLICAOF the current master on the server on ``port`` (an old master), as an operator does
        rather than wait the ~8 s Sentinel lets an instance claim the wrong role before converting it;
        returns once its link is up."""
        server = self.servers[port]
        client = server.client(socket_timeout=2)
        client.replicaof("127.0.0.1", self.master_port())
        client.close()
        wait_for(
            lambda: replication_info(server).get("master_link_status") == "up", timeout, "the old master a replica"
        )

    def pause(self, server: EmbeddedRedis) -> None:
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)

    def resume(self, server: EmbeddedRedis) -> None:
        assert server.process is not None
        server.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        for _, process in self.sentinels:
            stop_process(process, timeout=5)
        for server in self.servers.values():
            if server.process is not None:
                self.resume(server)  # a stopped process cannot act on SIGTERM
            server.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- plumbing --------------------------------------------------------------------------------------

    def _server(self, *args: str) -> EmbeddedRedis:
        server = EmbeddedRedis(binary=self.binary, extra_args=(*SYNC_AT_ONCE, *args)).start()
        self.servers[server.port] = server
        return server

    def _sentinel(
        self, port: int, myid: str, master_port: int, replica_port: int, peers: list[tuple[int, str]]
    ) -> None:
        conf = self.directory / f"sentinel-{port}.conf"  # sentinel rewrites its file: one each
        known = "".join(f"sentinel known-sentinel {self.name} 127.0.0.1 {p} {i}\n" for p, i in peers)
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.directory}\nlogfile {self.directory}/sentinel-{port}.log\n"
            f"sentinel myid {myid}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.name} 3000\n"
            f"sentinel known-replica {self.name} 127.0.0.1 {replica_port}\n" + known
        )
        process = subprocess.Popen(
            [self.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.sentinels.append((port, process))
        client = self._sentinel_client(port)
        wait_for(lambda: _answers(client), 10, f"sentinel on {port}")

    def _sentinel_client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1)

    def _master_of(self, sentinel_port: int) -> int | None:
        try:
            addr = self._sentinel_client(sentinel_port).sentinel_get_master_addr_by_name(self.name)
        except redis.RedisError:
            return None
        return int(addr[1]) if addr else None


def replication_info(server: EmbeddedRedis) -> dict[str, Any]:
    """``INFO replication`` of ``server``; empty while it does not answer."""
    client = server.client(socket_timeout=2)
    try:
        return dict(client.info("replication"))
    except redis.RedisError:
        return {}
    finally:
        client.close()


def cluster_port() -> int:
    """A free port a Cluster node can use: its bus port (+10000) must be free too and below 65536."""
    for _ in range(100):
        port = random.randint(20000, 55000)
        if all(_free(p) for p in (port, port + 10000)):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _linked(instances: list[dict[str, Any]], count: int) -> bool:
    """``count`` instances (SENTINEL REPLICAS / SENTINEL SENTINELS) are listed, each connected and, for a
    replica, its INFO read (a sentinel that never read it cannot pick it in a failover)."""
    return len(instances) == count and all(
        not i["is_disconnected"] and not i["is_sdown"] and (not i["is_slave"] or i.get("master-link-status") == "ok")
        for i in instances
    )


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class ClusterSet:
    """A Redis Cluster of three masters, slots split by ``redis-cli --cluster create``; with ``replicas``,
    that many replicas per master (for failover tests)."""

    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        self.binary = binary_or_skip()
        self.cli = binary_or_skip("redis-cli")
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.servers: list[EmbeddedRedis] = []

    def start(self) -> ClusterSet:
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                args = (
                    *SYNC_AT_ONCE,
                    # CLUSTER SLOTS lists a replica once its replication offset is not 0, which an idle
                    # master moves only with its PING to replicas: every 10 s by default
                    "--repl-ping-replica-period",
                    "1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                )
                server = EmbeddedRedis(binary=self.binary, port=cluster_port(), extra_args=args)
                self.servers.append(server.start())
            nodes = [f"127.0.0.1:{s.port}" for s in self.servers]
            subprocess.run([self.cli, "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas),
                            "--cluster-yes"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=30)  # fmt: skip
            for server in self.servers:
                client = server.client(socket_timeout=2)
                wait_for(lambda c=client: c.cluster("info")["cluster_state"] == "ok", 10, "cluster state ok")
                client.close()
            if self.replicas:  # every master lists its replicas, and each replica's link is up
                wait_for(self._replicated, 30, "replicas in sync")
        except BaseException:
            self.close()
            raise
        return self

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def server(self, port: int) -> EmbeddedRedis:
        return next(s for s in self.servers if s.port == port)

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot, as a live node sees it."""
        for s in self.alive():
            try:
                slot = int(self._ask(s, "CLUSTER", "KEYSLOT", key))
                for first, last, master, *_ in self._ask(s, "CLUSTER", "SLOTS"):
                    if first <= slot <= last:
                        return int(master[1])
            except redis.RedisError:
                continue
        raise RuntimeError(f"no live node knows the master of {key!r}")

    def replica_of(self, master_port: int) -> EmbeddedRedis:
        return next(s for s in self.alive() if replication_info(s).get("master_port") == master_port)

    def failover(self, master_port: int) -> int:
        """CLUSTER FAILOVER on a replica of ``master_port`` (a planned switch, no write lost); returns the
        new master's port once every live node agrees. An election the replica did not win (its request
        timed out: busy box) is asked for again, the last time with FORCE."""
        replica = self.replica_of(master_port)
        for attempt in ("", "", "FORCE"):
            self._ask(replica, "CLUSTER", "FAILOVER", *([attempt] if attempt else []))
            try:
                wait_for(lambda: replication_info(replica).get("role") == "master", 8, f"{replica.port} promoted")
                break
            except AssertionError:
                continue
        return self.wait_for_new_master(master_port, replica.port)

    def kill(self, port: int) -> None:
        """SIGKILL a node (a crash): its replica is promoted after the node timeout."""
        self.server(port).kill()

    def wait_for_new_master(self, old: int, new: int | None = None, timeout: float = 30) -> int:
        """Once the live nodes' slot map names no master at ``old`` (``new`` among them when given) and the
        cluster state is ok on every live node: the port of the master that took ``old``'s slots."""
        before = {(first, last) for first, last, master, *_ in self._slots() if int(master[1]) == old}

        def promoted() -> int | None:
            masters = {(first, last): int(master[1]) for first, last, master, *_ in self._slots()}
            if not masters or old in masters.values() or (new is not None and new not in masters.values()):
                return None
            # ``before`` is empty when the switch was over before this call: any master stands in
            return next((masters[r] for r in before if r in masters), new) or min(masters.values())

        port = int(wait_for(promoted, timeout, f"a master in place of {old}"))
        wait_for(lambda: all(self._state_ok(s) for s in self.alive()), timeout, "cluster state ok again")
        return port

    def alive(self) -> list[EmbeddedRedis]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    def close(self) -> None:
        for server in self.servers:
            server.close()

    # --- plumbing --------------------------------------------------------------------------------------

    def _slots(self) -> list[Any]:
        for s in self.alive():
            try:
                return list(self._ask(s, "CLUSTER", "SLOTS"))
            except redis.RedisError:
                continue
        return []

    def _state_ok(self, server: EmbeddedRedis) -> bool:
        try:
            return self._ask(server, "CLUSTER", "INFO").find(b"cluster_state:ok") >= 0
        except redis.RedisError:
            return False

    def _replicated(self) -> bool:
        slots = self._slots()
        if len(slots) < self.masters or any(len(r) < 3 + self.replicas for r in slots):
            return False
        infos = [replication_info(s) for s in self.alive()]
        replicas = [i for i in infos if i.get("role") == "slave"]
        return len(replicas) == self.masters * self.replicas and all(
            i.get("master_link_status") == "up" for i in replicas
        )

    @staticmethod
    def _ask(server: EmbeddedRedis, *command: Any) -> Any:
        client = server.client(socket_timeout=2)
        try:
            return client.execute_command(*command)
        finally:
            client.close()
