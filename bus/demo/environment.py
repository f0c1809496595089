"""What `tradebus demo` runs on: a Redis (the configured one, or an embedded one), a private Celery
broker, a real worker subprocess, its own key prefix; everything it started is stopped, and on a
shared Redis every key under its prefix is deleted, when it ends."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import redis

from bus.config import LoadEnvironmentVariables, Settings, safe_url
from bus.config.topology import SINGLE_SCHEMES
from bus.core.connection import make_client
from bus.core.keyspace import delete_matching
from bus.demo.errors import DemoError
from bus.embedded import EmbeddedRedis, redis_answers, stop_process

if TYPE_CHECKING:
    from celery import Celery

#: broker URL schemes of RabbitMQ (kombu's py-amqp transport)
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
#: seconds the worker has to answer a ping after it is started
WORKER_START_TIMEOUT = 45.0
#: risk limit the demo's worker enforces: an order above this many lots is a breach
DEMO_MAX_ORDER_VOLUME = 5


class DemoEnvironment:
    """Context manager: ``with DemoEnvironment(base, embedded=...) as env: env.settings ...``."""

    def __init__(
        self,
        base: Settings,
        *,
        embedded: bool = False,
        pool: str = "prefork",
        concurrency: int = 2,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.base = base
        self.force_embedded = embedded
        self.pool = pool
        self.concurrency = concurrency
        self.log = log or (lambda msg: None)
        self.run_id = uuid.uuid4().hex[:8]
        self.prefix = f"tradebus-demo-{self.run_id}"
        self.servers: list[EmbeddedRedis] = []
        self.shared = False
        self.worker: subprocess.Popen[bytes] | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"tradebus-demo-{self.run_id}-"))
        self.worker_log = self.workdir / "worker.log"
        self.worker_name = f"demo-{self.run_id}@%h"
        self.settings: Settings = base
        self.redis_desc = ""
        self.app: Celery | None = None
        self.routes_file: Path | None = None  # private queues on a shared (RabbitMQ) broker

    # --- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> DemoEnvironment:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        url = self.base.bus_url
        if not self.force_embedded and self._answers(url):
            # The configured Redis answers (one server, a Sentinel master or a Cluster): the bus lives there
            # under our own prefix. The broker is a private embedded server, so the demo's worker never
            # takes anybody else's tasks; unless the broker configured is RabbitMQ, which the demo then uses
            # (a broker that is not Redis is what the user came to try: its tradebus queues are shared).
            self.shared = True
            bus_url = url
            configured = self.base.broker_url
            if urlsplit(configured).scheme in AMQP_SCHEMES:
                broker_url = configured
                self.routes_file = self._private_queues()
                self.log(f"broker: RabbitMQ at {safe_url(configured)}, queues {self.prefix}.* (deleted after)")
            else:
                broker_url = self._embed().url
            self.redis_desc = f"Redis at {safe_url(url)} (shared; prefix {self.prefix}, cleaned up after)"
        else:
            why = "asked for" if self.force_embedded else f"nothing answers at {safe_url(url)}"
            server = self._embed()
            bus_url = server.url
            broker_url = server.url.rsplit("/", 1)[0] + "/1"
            self.redis_desc = f"embedded redis-server on port {server.port} ({why})"
        self.log(self.redis_desc)
        self.settings = LoadEnvironmentVariables(
            None, redis_url=bus_url, celery_broker_url=broker_url, key_prefix=self.prefix,
            routes_file=str(self.routes_file) if self.routes_file else None,
        )  # fmt: skip
        self._start_worker()

    def _private_queues(self) -> Path:
        """A routes file of the default routes on queues of the demo's own (``<prefix>.tradebus.state``...):
        a RabbitMQ broker is shared, and another worker consuming the tradebus queues would take the demo's
        tasks (a Redis broker is private: embedded)."""
        from bus.dispatch.routing import RoutingTable

        table = RoutingTable.default()
        return RoutingTable(replace(r, queue=f"{self.prefix}.{r.queue}") for r in table).to_file(
            self.workdir / "routes.json"
        )

    def _answers(self, url: str) -> bool:
        """The configured Redis answers PING (any topology: bus.core.connection.make_client)."""
        if urlsplit(url).scheme in SINGLE_SCHEMES:
            return redis_answers(url, timeout=1.0)
        try:
            client = make_client(url, self.base.model_copy(update={"redis_connect_timeout": 1.0}), retries=0)
        except (redis.RedisError, OSError):
            return False
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def _embed(self) -> EmbeddedRedis:
        directory = self.workdir / f"redis{len(self.servers)}"
        directory.mkdir(parents=True, exist_ok=True)
        try:
            server = EmbeddedRedis(directory=directory).start()
        except FileNotFoundError as e:
            raise DemoError(f"no Redis answers and none can be started: {e}") from None
        self.servers.append(server)
        return server

    def worker_env(self) -> dict[str, str]:
        """The worker subprocess's environment: this process's own (PATH, the virtualenv, the locale:
        what starting Python needs), passed on as a whole, with the demo's settings on top. Nothing here
        is read as configuration: the worker reads these variables through bus.config."""
        env = dict(os.environ)
        env.update(
            {
                "REDIS_URL": self.settings.bus_url,
                "CELERY_BROKER_URL": self.settings.broker_url,
                "TRADEBUS_KEY_PREFIX": self.prefix,
                "TRADEBUS_RISK_MAX_ORDER_VOLUME": str(DEMO_MAX_ORDER_VOLUME),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.routes_file is not None:
            env["TRADEBUS_ROUTES_FILE"] = str(self.routes_file)
        for name in ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "REDIS_USERNAME"):
            env.pop(name, None)  # REDIS_URL above carries them
        return env

    def _start_worker(self) -> None:
        from celery_app import make_celery, routing_from_settings

        queues = ",".join(q for q in routing_from_settings(self.settings).queues if q.startswith(self._queue_prefix))
        self.log(
            f"starting a Celery worker: celery -A celery_app worker -P {self.pool} -c {self.concurrency} -Q {queues}"
        )
        with open(self.worker_log, "wb") as out:
            self.worker = subprocess.Popen(
                self._worker_command(queues),
                env=self.worker_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
        self.app = make_celery(self.settings)
        self._wait_for_worker(self.worker, self.app)

    def _worker_command(self, queues: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_app",
            "worker",
            "-Q",
            queues,
            "-P",
            self.pool,
            "-c",
            str(self.concurrency),
            "-n",
            self.worker_name,
            "-E",  # task events: the demo measures publish -> task start from them
            "--without-gossip",
            "--without-mingle",
            "-l",
            "WARNING",
        ]

    def _wait_for_worker(self, worker: subprocess.Popen[bytes], app: Celery) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise DemoError(f"the Celery worker exited with {worker.returncode}: {self.worker_tail()}")
            replies = app.control.ping(timeout=0.5) or []
            if any(name.startswith(f"demo-{self.run_id}@") for r in replies for name in r):
                return
        raise DemoError(f"the Celery worker did not answer within {WORKER_START_TIMEOUT:.0f}s: {self.worker_tail()}")

    @property
    def _queue_prefix(self) -> str:
        return f"{self.prefix}." if self.routes_file is not None else ""

    def _delete_private_queues(self, app: Celery) -> None:
        from celery_app import routing_from_settings

        try:
            with app.connection_for_write() as conn:
                for queue in routing_from_settings(self.settings).queues:
                    if queue.startswith(self._queue_prefix):
                        conn.default_channel.queue_delete(queue)
        except Exception as e:  # noqa: BLE001 - leftover empty queues are not worth failing the demo for
            self.log(f"could not delete the demo's queues: {e}")

    def worker_tail(self, lines: int = 3) -> str:
        try:
            text = self.worker_log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:]) or "(empty log)"

    def client(self) -> redis.Redis:
        return make_client(self.settings.bus_url, self.settings)

    def close(self) -> None:
        if self.worker is not None:
            stop_process(self.worker, timeout=15)  # SIGTERM: a warm shutdown finishes the tasks in hand
            self.worker = None
        if self.app is not None:
            if self.routes_file is not None:
                self._delete_private_queues(self.app)
            self.app.close()
            self.app = None
        if self.shared:
            self._delete_prefix()
        for server in reversed(self.servers):
            server.close()
        self.servers.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _delete_prefix(self) -> None:
        try:
            client = self.client()
        except redis.RedisError:
            return
        try:
            delete_matching(client, f"{self.prefix}:*")
        except redis.RedisError as e:
            self.log(f"could not delete the demo keys under {self.prefix}: {e}")
        finally:
            client.close()
