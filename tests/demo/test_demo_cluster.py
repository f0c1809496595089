"""`tradebus demo` as a user with a 3-master Redis Cluster and RabbitMQ runs it (REDIS_URL=redis+cluster://...,
CELERY_BROKER_URL=amqp://...): state and risk as log routes drained on every master, the worker fed through
RabbitMQ on queues of the demo's own, and every key and queue of the run gone afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from redis.cluster import ClusterNode, RedisCluster

from tests.demo.test_demo import DEMO_BUDGET_SECONDS, check_summary, run_demo
from tests.helpers import cli_env
from tests.rabbitmq import AMQP_URL, skip_without_rabbitmq
from tests.topology_servers import ClusterSet

pytestmark = [pytest.mark.slow, pytest.mark.celery, pytest.mark.rabbitmq,
              skip_without_rabbitmq]  # fmt: skip


@pytest.fixture
def cluster() -> Iterator[ClusterSet]:
    topology = ClusterSet().start()
    yield topology
    topology.close()


def test_demo_on_a_three_master_cluster_with_rabbitmq(cluster: ClusterSet) -> None:
    p, took = run_demo(cli_env(REDIS_URL=cluster.url, CELERY_BROKER_URL=AMQP_URL), "--json")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert took < DEMO_BUDGET_SECONDS
    s = json.loads(p.stdout)
    check_summary(s)  # risk breach raised by the risk drain, kill switch, state projection matches the account
    assert "shared" in s["redis"] and s["redis"].startswith("Redis at redis+cluster://")
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", server.port) for server in cluster.servers])
    try:
        masters = {client.get_node_from_key(f"{s['key_prefix']}:{{{sym}}}:log").name for sym in s["symbols"]}
        assert len(masters) >= 2  # the symbols' logs (and their drains) were on more than one master
        assert list(client.scan_iter(match=f"{s['key_prefix']}:*", count=1000)) == []  # cleaned up on every node
    finally:
        client.close()
