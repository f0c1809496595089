"""Settings precedence (explicit > environment > .env file > defaults), errors, secrets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bus import ConfigError, LoadEnvironmentVariables
from bus.config import safe_url

VARS = [
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_DB",
    "REDIS_PASSWORD",
    "REDIS_USERNAME",
    "REDIS_SSL",
    "REDIS_SSL_CA_CERTS",
    "REDIS_SSL_CERTFILE",
    "REDIS_SSL_KEYFILE",
    "REDIS_SSL_CERT_REQS",
    "CELERY_BROKER_URL",
    "TRADEBUS_KEY_PREFIX",
    "TRADEBUS_LOG_MAXLEN",
    "TRADEBUS_MAX_EVENT_BYTES",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in VARS:
        monkeypatch.delenv(var, raising=False)


def write_env(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".env"
    path.write_text(text)
    return path


def test_defaults_when_there_is_no_file(tmp_path: Path) -> None:
    s = LoadEnvironmentVariables(tmp_path / "missing.env")
    assert (s.redis_host, s.redis_port, s.redis_db, s.redis_password) == ("localhost", 6379, 0, None)
    assert s.bus_url == "redis://localhost:6379/0"
    assert s.broker_url == "redis://localhost:6379/1"  # same Redis, the next database
    assert s.key_prefix == "tradebus" and s.log_maxlen == 100_000 and s.max_event_bytes == 65536


def test_reference_env_file_is_read(tmp_path: Path) -> None:
    env = write_env(tmp_path, "REDIS_HOST=redis.internal\nREDIS_PORT=6380\nREDIS_DB=3\nREDIS_PASSWORD=\n")
    s = LoadEnvironmentVariables(str(env))
    assert s.bus_url == "redis://redis.internal:6380/3"
    assert s.broker_url == "redis://redis.internal:6380/4"
    assert s.redis_password is None or s.redis_password.get_secret_value() == ""


def test_environment_overrides_the_file_and_arguments_override_both(tmp_path, monkeypatch) -> None:
    env = write_env(tmp_path, "REDIS_HOST=from-file\nREDIS_PORT=1111\nTRADEBUS_KEY_PREFIX=file\n")
    monkeypatch.setenv("REDIS_PORT", "2222")
    s = LoadEnvironmentVariables(env)
    assert (s.redis_host, s.redis_port, s.key_prefix) == ("from-file", 2222, "file")
    s = LoadEnvironmentVariables(env, key_prefix="explicit")
    assert s.key_prefix == "explicit"


def test_redis_url_wins_over_the_parts_and_sets_the_broker_default(monkeypatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "ignored")
    monkeypatch.setenv("REDIS_URL", "redis://user:pw@cache:7000/5")
    s = LoadEnvironmentVariables(None)
    assert s.bus_url == "redis://user:pw@cache:7000/5"
    assert s.broker_url == "redis://user:pw@cache:7000/6"


def test_explicit_broker_url_is_kept(monkeypatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    assert LoadEnvironmentVariables(None).broker_url == "amqp://guest:guest@127.0.0.1:5672//"


def test_acl_user_password_and_tls_compose_a_rediss_url(tmp_path) -> None:
    env = write_env(
        tmp_path,
        "REDIS_USERNAME=trader\nREDIS_PASSWORD=p@ss:w/rd\nREDIS_SSL=true\n"
        "REDIS_SSL_CA_CERTS=/etc/ca.pem\nREDIS_SSL_CERTFILE=/etc/c.pem\n"
        "REDIS_SSL_KEYFILE=/etc/k.pem\n",
    )
    s = LoadEnvironmentVariables(env)
    assert s.bus_url == "rediss://trader:p%40ss%3Aw%2Frd@localhost:6379/0"
    assert s.ssl_options() == {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_certfile": "/etc/c.pem",
        "ssl_keyfile": "/etc/k.pem",
    }
    assert LoadEnvironmentVariables(None).ssl_options() == {}


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("REDIS_PORT", "abc"),
        ("REDIS_PORT", "70000"),
        ("REDIS_DB", "-1"),
        ("REDIS_SSL", "maybe"),
        ("TRADEBUS_LOG_MAXLEN", "0"),
        ("TRADEBUS_MAX_EVENT_BYTES", "ten"),
        ("REDIS_URL", "http://x"),
        ("CELERY_BROKER_URL", "sqs://queue"),
        ("REDIS_SSL_CERT_REQS", "sometimes"),
    ],
)
def test_a_bad_value_names_the_variable(monkeypatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        LoadEnvironmentVariables(None)
    assert var in str(err.value)
    assert isinstance(err.value, ValueError)


def test_bad_value_in_the_file_names_the_variable(tmp_path) -> None:
    with pytest.raises(ConfigError, match="REDIS_PORT"):
        LoadEnvironmentVariables(write_env(tmp_path, "REDIS_PORT=abc\n"))


def test_passwords_never_show_in_repr_str_errors_or_logs(monkeypatch, caplog) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "hunter2")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://:brokersecret@b:6379/1")
    s = LoadEnvironmentVariables(None)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("settings: %s %r", s, s)
    for text in (repr(s), str(s), caplog.text):
        assert "hunter2" not in text and "brokersecret" not in text
    assert "***" in repr(s)
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@h:1/0")
    monkeypatch.setenv("REDIS_PORT", "nope")
    with pytest.raises(ConfigError) as err:
        LoadEnvironmentVariables(None)
    assert "hunter2" not in str(err.value)


def test_safe_url_masks_only_the_password() -> None:
    assert safe_url("redis://user:secret@h:6379/0") == "redis://user:***@h:6379/0"
    assert safe_url("redis://h:6379/0") == "redis://h:6379/0"
    assert safe_url("amqp://guest:guest@127.0.0.1:5672//") == "amqp://guest:***@127.0.0.1:5672//"


def test_loading_settings_opens_no_connection(monkeypatch) -> None:
    # a port nothing listens on: building settings must not try to connect
    monkeypatch.setenv("REDIS_PORT", "1")
    assert LoadEnvironmentVariables(None).redis_port == 1


def test_environ_merges_the_env_file_under_the_real_environment(tmp_path, monkeypatch) -> None:
    # Risk limits, webhooks and reconciliation read their own variables: a .env file must
    # configure them for a worker exactly as it configures the bus.
    env = write_env(tmp_path, "TRADEBUS_WEBHOOK_URL=http://hook.local/x\nTRADEBUS_RISK_MAX_OPEN_POSITIONS=3\n")
    monkeypatch.setenv("TRADEBUS_RISK_MAX_OPEN_POSITIONS", "7")
    merged = LoadEnvironmentVariables(env).environ()
    assert merged["TRADEBUS_WEBHOOK_URL"] == "http://hook.local/x"
    assert merged["TRADEBUS_RISK_MAX_OPEN_POSITIONS"] == "7"
    assert "TRADEBUS_WEBHOOK_URL" not in LoadEnvironmentVariables(None).environ()


def test_tls_settings_serve_a_rediss_bus_and_a_rediss_broker(tmp_path) -> None:
    from celery_app.config import celery_config

    env = write_env(tmp_path, "REDIS_URL=rediss://:pw@cache:6380/0\nREDIS_SSL_CA_CERTS=/etc/ca.pem\n")
    s = LoadEnvironmentVariables(env)
    assert s.broker_url.startswith("rediss://")
    conf = celery_config(s)
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/ca.pem"}
    assert "broker_use_ssl" not in celery_config(LoadEnvironmentVariables(None))
