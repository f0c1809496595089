"""Sentinel and Cluster URLs: parsed, checked when read, turned into the broker's kombu spelling, and
built into the right redis-py client with the bus's timeouts and retry policy (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from bus import ConfigError, LoadEnvironmentVariables
from bus.config import Settings, safe_url
from bus.config.topology import Topology, parse_topology
from bus.core.connection import describe_server, make_client, make_cluster_client
from celery_app.config import celery_config

SENTINEL_URL = "redis+sentinel://app:s3cret@10.0.0.1:26379,10.0.0.2:26380,sentinel-c/mymaster/2"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("REDIS_URL", "CELERY_BROKER_URL", "TRADEBUS_BROKER_MASTER_NAME", "TRADEBUS_DISPATCH"):
        monkeypatch.delenv(var, raising=False)


def test_sentinel_url_names_nodes_master_db_and_credentials() -> None:
    t = parse_topology(SENTINEL_URL)
    assert t == Topology(
        "sentinel",
        (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26379)),
        "mymaster",
        2,
        "app",
        "s3cret",
        False,
    )
    assert "s3cret" not in t.where()
    assert parse_topology("rediss+sentinel://h:1/m").tls
    assert parse_topology("redis+sentinel://h:1/m").db == 0


def test_cluster_url_lists_nodes_and_only_db_0() -> None:
    t = parse_topology("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001")
    assert (t.kind, t.nodes, t.password, t.username) == (
        "cluster",
        (("127.0.0.1", 7000), ("127.0.0.1", 7001)),
        "pw",
        None,
    )
    with pytest.raises(ValueError, match="only database 0"):
        parse_topology("redis+cluster://h:7000/3")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h:26379", "needs the master's name"),
        ("redis+sentinel://h:26379/m/x", "database must be a number"),
        ("redis+sentinel://h:port/m", "bad port"),
        ("redis+cluster://", "at least one host"),
    ],
)
def test_malformed_topology_url_is_a_config_error_without_the_password(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as e:
        LoadEnvironmentVariables(None, REDIS_URL=url.replace("://", "://u:hunter2@"))
    assert "hunter2" not in str(e.value)


def test_sentinel_bus_from_env_file_derives_a_kombu_sentinel_broker(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(f"REDIS_URL={SENTINEL_URL}\n")
    s = LoadEnvironmentVariables(env)
    assert s.topology is not None and s.topology.service_name == "mymaster"
    # kombu's spelling: one sentinel:// per node, the broker database next to the bus's, master apart
    assert s.broker_url == ";".join(
        f"sentinel://app:s3cret@{node}/3" for node in ("10.0.0.1:26379", "10.0.0.2:26380", "sentinel-c:26379")
    )
    assert s.broker_sentinel_master() == "mymaster"
    transport = celery_config(s)["broker_transport_options"]
    assert transport["master_name"] == "mymaster"
    assert "broker_transport" not in celery_config(s)  # the scheme picks celery_app.transport's SentinelTransport
    assert transport["unacked_refresh_interval"] > 0  # with its held-messages heartbeat (celery_app.heartbeat)
    assert "s3cret" not in safe_url(s.bus_url) and "s3cret" not in safe_url(s.broker_url)
    assert "s3cret" not in repr(s)


def test_broker_urls_in_both_sentinel_spellings() -> None:
    s = Settings(redis_url="redis://localhost:6379/0", celery_broker_url="redis+sentinel://h1:5000,h2:5001/jobs/4")
    assert s.broker_url == "sentinel://h1:5000/4;sentinel://h2:5001/4"
    assert s.broker_sentinel_master() == "jobs"
    kombu = "sentinel://h1:5000/4;sentinel://h2:5001/4"
    named = Settings(celery_broker_url=kombu, broker_master_name="jobs")
    assert (named.broker_url, named.broker_sentinel_master()) == (kombu, "jobs")
    # the bus's master by default, when the bus is on Sentinel too
    assert Settings(redis_url=SENTINEL_URL, celery_broker_url=kombu).broker_sentinel_master() == "mymaster"
    with pytest.raises(ConfigError, match="TRADEBUS_BROKER_MASTER_NAME"):
        LoadEnvironmentVariables(None, CELERY_BROKER_URL=kombu)
    assert Settings(celery_broker_url="amqp://guest@localhost//").broker_sentinel_master() is None


def test_cluster_bus_needs_a_separate_broker() -> None:
    with pytest.raises(ConfigError, match="set CELERY_BROKER_URL"):
        LoadEnvironmentVariables(None, REDIS_URL="redis+cluster://127.0.0.1:7000")
    s = Settings(redis_url="redis+cluster://127.0.0.1:7000", celery_broker_url="amqp://guest:guest@127.0.0.1//")
    assert s.broker_url.startswith("amqp://")
    assert Settings(redis_url="redis+cluster://127.0.0.1:7000", dispatch=False).topology is not None
    with pytest.raises(ConfigError, match="no Cluster transport"):
        LoadEnvironmentVariables(None, CELERY_BROKER_URL="redis+cluster://127.0.0.1:7000")


def test_sentinel_url_builds_a_master_client_with_the_bus_policy() -> None:
    s = Settings(redis_url=SENTINEL_URL, redis_socket_timeout=1.5, redis_connect_timeout=0.7)
    client = make_client(s.bus_url, s)  # connects lazily: no sentinel needs to run
    pool = client.connection_pool
    assert isinstance(client, redis.Redis) and isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    kw = pool.connection_kwargs
    assert (kw["db"], kw["username"], kw["password"]) == (2, "app", "s3cret")
    assert (kw["socket_timeout"], kw["socket_connect_timeout"], kw["socket_keepalive"]) == (1.5, 0.7, True)
    assert kw["retry"].get_retries() == 2
    sentinel_kw = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert (sentinel_kw["socket_timeout"], sentinel_kw.get("password")) == (1.5, None)
    assert describe_server(s.bus_url) == "sentinel mymaster@10.0.0.1:26379,10.0.0.2:26380,sentinel-c:26379"


def test_cluster_url_builds_a_cluster_client() -> None:
    url = "redis+cluster://127.0.0.1:1,127.0.0.1:2"
    s = Settings(redis_url=url, dispatch=False, redis_socket_timeout=1.5)
    # RedisCluster connects to a startup node at once: with none listening it says so (the client on a
    # running Cluster: tests/core/test_cluster.py)
    for build in (make_client, make_cluster_client):
        with pytest.raises(redis.RedisClusterException):
            build(s.bus_url, s)
    with pytest.raises(ConfigError, match="not a Redis Cluster"):
        make_cluster_client(SENTINEL_URL, s)
