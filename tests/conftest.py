"""Fixtures every folder shares: a real Redis (the machine's, or an embedded one), a key prefix per
test, servers a test owns, a webhook receiver.

Tests never FLUSHALL/FLUSHDB the shared server: each test works under its own key prefix and deletes
only its own keys afterwards.

"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from bus.config import LoadEnvironmentVariables, Settings
from bus.embedded import EmbeddedRedis, redis_answers
from tests.helpers import delete_prefix

# Databases the test suite uses on the shared server (bus / Celery broker), away from the default 0/1.
TEST_BUS_DB = 9
TEST_BROKER_DB = 10


# --- Redis ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL if set; else the local server if it answers; else a real embedded redis-server."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    local = f"redis://127.0.0.1:6379/{TEST_BUS_DB}"
    if redis_answers(local):
        yield local
        return
    with EmbeddedRedis() as server:
        yield server.url.rsplit("/", 1)[0] + f"/{TEST_BUS_DB}"


@pytest.fixture(scope="session")
def broker_url(redis_url: str) -> str:
    """Celery broker for tests: the same Redis server, its own database."""
    return redis_url.rsplit("/", 1)[0] + f"/{TEST_BROKER_DB}"


def settings_for(redis_url: str, broker_url: str, key_prefix: str) -> Settings:
    """Settings pointing at the test Redis, under ``key_prefix`` (broker queues included)."""
    return LoadEnvironmentVariables(
        None,
        redis_url=redis_url,
        celery_broker_url=broker_url,
        key_prefix=key_prefix,
        broker_key_prefix=f"{key_prefix}:",
    )


@pytest.fixture
def key_prefix(redis_url: str, broker_url: str) -> Iterator[str]:
    """A fresh key prefix for one test; every key under it (bus and broker db) is deleted afterwards."""
    prefix = f"tbtest-{uuid.uuid4().hex[:10]}"
    yield prefix
    delete_prefix(redis_url, prefix)
    delete_prefix(broker_url, prefix)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str, broker_url: str, key_prefix: str) -> Settings:
    """Settings pointing at the test Redis, under this test's key prefix (broker queues included)."""
    return settings_for(redis_url, broker_url, key_prefix)


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server this test owns (AOF on), free to stop, kill and restart."""
    with EmbeddedRedis(appendonly=True) as server:
        yield server


# --- a webhook receiver ------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """``statuses``: what to answer, one per request; after the last, ``default``.

    A status of 0 means "hang until the test ends" (to provoke client timeouts).
    """

    statuses: list[int] = field(default_factory=list)
    default: int = 200
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_status(self) -> int:
        with self._lock:
            return self.statuses.pop(0) if self.statuses else self.default


@contextlib.contextmanager
def _serve_webhook(statuses: list[int] | None = None, default: int = 200) -> Iterator[Receiver]:
    receiver = Receiver(statuses=list(statuses or []), default=default)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
            status = receiver.next_status()
            if status == 0:
                receiver.release.wait(30)
                return
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def webhook_receiver() -> Callable[..., contextlib.AbstractContextManager[Receiver]]:
    """``with webhook_receiver(statuses, default=200) as rx:`` a real local HTTP server (http.server in a
    thread) that answers from a script and records each request in ``rx.requests``."""
    return _serve_webhook
