"""Fixtures every folder shares: a real Redis (the machine's, or an embedded one), a key prefix per
test, servers a test owns, Celery apps and workers, a webhook receiver.

Tests never FLUSHALL/FLUSHDB the shared server: each test works under its own key prefix and deletes
only its own keys afterwards.

Workers. celery.contrib.pytest (loaded by the pytest-celery plugin) runs one in-process worker for
the whole session, ``celery_session_worker``, on ``celery_session_app``, which is overridden here to
be the app ``make_celery`` builds. A test points that app at its own settings, key prefix and
routing table with ``worker_app``; what the worker's tasks write lands under the test's prefix. The
queues stay under a session prefix: a running worker consumes the queue keys it bound at start.
Tests whose worker must use another broker (a server they own, RabbitMQ) start one with
``own_worker``, and run before the session worker starts (see pytest_collection_modifyitems); tests
that kill or restart a worker use subprocess workers (tests/subprocess_workers.py).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state

from bus.config import LoadEnvironmentVariables, Settings
from bus.dispatch.routing import RoutingTable
from bus.embedded import EmbeddedRedis, redis_answers
from celery_app import make_celery
from tests.helpers import delete_prefix, wait_for

# subprocess_worker / worker_log: `celery -A celery_app worker` processes, for tests that kill workers;
# vhost: a RabbitMQ vhost of the test's own
pytest_plugins = ("tests.subprocess_workers", "tests.topology_servers", "tests.rabbitmq")

# Databases the test suite uses on the shared server (bus / Celery broker), away from the default 0/1.
TEST_BUS_DB = 9
TEST_BROKER_DB = 10
#: the module TRADEBUS_EVENT_TYPES_MODULE names in the tests (a user's custom types)
CUSTOM_TYPES_MODULE = "tests.custom_event_types"
WORKER_LOGLEVEL = "WARNING"


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


# --- Celery ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def celery_includes() -> tuple[str, ...]:
    """Modules every in-process worker imports: the tasks only tests use."""
    return ("tests.worker_tasks",)


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    # No ping check: it waits for a result, and tradebus keeps no result backend.
    return {"perform_ping_check": False, "shutdown_timeout": 30, "loglevel": WORKER_LOGLEVEL}


@pytest.fixture(scope="session")
def celery_session_app(redis_url: str, broker_url: str, celery_config: dict[str, Any]) -> Iterator[Celery]:
    """celery.contrib.pytest's session app, built as production builds it (``make_celery``: the tradebus
    configuration, tasks and task context), queues under a session prefix; ``celery_config`` on top."""
    prefix = f"tbtest-session-{uuid.uuid4().hex[:10]}"
    yield make_celery(settings_for(redis_url, broker_url, prefix), set_as_current=False, **celery_config)
    delete_prefix(redis_url, prefix)
    delete_prefix(broker_url, prefix)


@pytest.fixture
def celery_app(settings: Settings) -> Celery:
    """celery.contrib.pytest's per-test app, built by ``make_celery`` for this test's settings; no
    worker consumes its queues."""
    return make_celery(settings, set_as_current=False)


def _wait_until_idle() -> None:
    """Until no in-process worker holds a task, running or reserved (an ETA retry included)."""
    wait_for(lambda: not worker_state.active_requests and not worker_state.reserved_requests,
             what="the worker to finish the tasks it took")  # fmt: skip


_SESSION_WORKER_STARTED = pytest.StashKey[bool]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests with a worker of their own run first. In-process Celery workers share process-wide state
    (kombu's event loop, the worker's stop flag): one may run only while no other does, and the
    session worker, once started, runs to the end of the session."""
    items.sort(key=lambda item: "own_worker" not in getattr(item, "fixturenames", ()))


@pytest.fixture
def session_worker(request: pytest.FixtureRequest, celery_session_worker: Any) -> Any:
    """``celery_session_worker``, noted as started (``own_worker`` refuses to start after it)."""
    request.config.stash[_SESSION_WORKER_STARTED] = True
    return celery_session_worker


@pytest.fixture
def worker_app(celery_session_app: Celery, session_worker: Any, settings: Settings) -> Iterator[Callable[..., Celery]]:
    """``worker_app(routing=None)``: the session worker's app, serving this test: its tasks use this
    test's settings, key prefix and ``routing`` (``make_celery``'s task context for them) until the
    test ends."""
    app, session_context, contexts = celery_session_app, celery_session_app.tradebus, []

    def serve(routing: RoutingTable | None = None) -> Celery:
        app.tradebus = make_celery(settings, routing, set_as_current=False).tradebus
        contexts.append(app.tradebus)
        return app

    yield serve
    try:
        _wait_until_idle()
    finally:
        app.tradebus = session_context
        for context in contexts:
            context.close()


@pytest.fixture
def worker(session_worker: Any) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """``with worker():`` the session worker runs this block's tasks; leaving the block waits until it
    has finished every task it took (as a worker stopped at the end of the block would)."""

    @contextlib.contextmanager
    def running() -> Iterator[Any]:
        yield session_worker
        _wait_until_idle()

    return running


@pytest.fixture
def own_worker(
    request: pytest.FixtureRequest, celery_includes: tuple[str, ...], celery_worker_parameters: dict[str, Any]
) -> Callable[..., contextlib.AbstractContextManager[Any]]:
    """``with own_worker(app, queues="a,b"):`` a real worker (solo pool) in a thread of this process (no
    ``queues``: every routed queue),
    for an app on a broker the session worker does not use (a server the test owns, RabbitMQ)."""
    if request.config.stash.get(_SESSION_WORKER_STARTED, False):
        pytest.fail("own_worker after the session worker started: tests using own_worker must run first")

    @contextlib.contextmanager
    def start(app: Celery, queues: str = "") -> Iterator[Any]:
        for module in celery_includes:
            app.loader.import_task_module(module)
        # queues="": no selection, as a worker started without -Q (every routed queue)
        with start_worker(app, queues=queues.split(",") if queues else None, **celery_worker_parameters) as w:
            yield w

    return start


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


# --- custom event types ----------------------------------------------------------------------------


@pytest.fixture
def custom_types() -> Iterator[ModuleType]:
    """tests/custom_event_types.py registered for one test and forgotten afterwards (the registry is per
    process; other tests must see only the built-ins)."""
    module = importlib.import_module(CUSTOM_TYPES_MODULE)  # the first import registers the types
    module.register()  # later tests: registered again (same models and effect: a no-op if still there)
    try:
        yield module
    finally:
        module.unregister()
