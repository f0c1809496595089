"""Redis topologies a test starts and owns on free loopback ports with the machine's redis-server:
a Sentinel set (a master, a replica, three sentinels) and a 3-master Cluster. Never a shared server."""

from __future__ import annotations

import random
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
            wait_for(lambda: self._info(replica).get("master_link_status") == "up", 10, "replica in sync")
            for _ in range(3):
                self._sentinel(master.port)
            # a failover needs the sentinels to know the replica and each other (hello messages, ~2 s)
            for port, _ in self.sentinels:
                s = self._sentinel_client(port)
                wait_for(lambda s=s: len(s.sentinel_slaves(self.name)) == 1, 10, "sentinel sees the replica")
                wait_for(lambda s=s: len(s.sentinel_sentinels(self.name)) == 2, 10, "sentinels see each other")
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
            return port if self._info(self.servers[port]).get("role") == "master" else None

        return int(wait_for(promoted, timeout, "a new master"))

    def role(self, port: int) -> str | None:
        """What the server on ``port`` says it is ("master", "slave"), None when it does not answer."""
        return self._info(self.servers[port]).get("role")

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
        server = self.servers[port]
        server.start()
        client = server.client(socket_timeout=2)
        client.replicaof("127.0.0.1", self.master_port())
        client.close()
        wait_for(lambda: self._info(server).get("master_link_status") == "up", timeout, "the old master a replica")

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
        server = EmbeddedRedis(binary=self.binary, extra_args=args).start()
        self.servers[server.port] = server
        return server

    def _sentinel(self, master_port: int) -> None:
        port = free_port()
        conf = self.directory / f"sentinel-{port}.conf"  # sentinel rewrites its file: one each
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.directory}\nlogfile {self.directory}/sentinel-{port}.log\n"
            f"sentinel monitor {self.name} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.name} 3000\n"
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

    @staticmethod
    def _info(server: EmbeddedRedis) -> dict[str, Any]:
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


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class ClusterSet:
    """A Redis Cluster of three masters (no replicas), slots split by ``redis-cli --cluster create``."""

    def __init__(self, masters: int = 3) -> None:
        self.binary = binary_or_skip()
        self.cli = binary_or_skip("redis-cli")
        self.masters = masters
        self.servers: list[EmbeddedRedis] = []

    def start(self) -> ClusterSet:
        try:
            for _ in range(self.masters):
                args = (
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                )
                server = EmbeddedRedis(binary=self.binary, port=cluster_port(), extra_args=args)
                self.servers.append(server.start())
            nodes = [f"127.0.0.1:{s.port}" for s in self.servers]
            subprocess.run([self.cli, "--cluster", "create", *nodes, "--cluster-yes"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)  # fmt: skip
            for server in self.servers:
                client = server.client(socket_timeout=2)
                wait_for(lambda c=client: c.cluster("info")["cluster_state"] == "ok", 10, "cluster state ok")
                client.close()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def close(self) -> None:
        for server in self.servers:
            server.close()
