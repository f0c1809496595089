"""The machine's RabbitMQ for the tests (a plugin of tests/conftest.py): whether it answers, ``rabbitmqctl``,
and the ``vhost`` fixture, a vhost of the test's own (RabbitMQ is shared between test runs and engineers)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def rabbit_answers() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=0.5).close()
        return True
    except OSError:
        return False


skip_without_rabbitmq = pytest.mark.skipif(not rabbit_answers(), reason="no RabbitMQ answering on 127.0.0.1:5672")


def amqp_url(vhost: str) -> str:
    """The broker URL of ``vhost`` on the machine's RabbitMQ, as guest."""
    return f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def close_connections(vhost: str) -> int:
    """``rabbitmqctl close_connection`` for every connection of ``vhost`` (no other vhost is touched)."""
    pids = [line.strip() for line in rabbitmqctl("list_connections", "-p", vhost, "pid").splitlines() if line.strip()]
    pids = [p for p in pids if p.startswith("<")]
    for pid in pids:
        rabbitmqctl("close_connection", pid, "tradebus test: connection killed mid-task")
    return len(pids)


@pytest.fixture
def vhost() -> Iterator[str]:
    """A RabbitMQ vhost of this test's own (guest may use it), deleted afterwards with everything in it;
    the test is skipped where RabbitMQ does not answer or there is no rabbitmqctl to create one with."""
    if not rabbit_answers():
        pytest.skip("no RabbitMQ answering on 127.0.0.1:5672")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("no rabbitmqctl to create a RabbitMQ vhost with")
    name = f"tbtest-{uuid.uuid4().hex[:10]}"
    try:
        rabbitmqctl("add_vhost", name)
    except RuntimeError as e:
        pytest.skip(f"cannot create a RabbitMQ vhost: {e}")
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)
