"""Settings precedence (explicit > environment > .env file > defaults), errors, secrets; the groups
(risk, notify, reconcile, beat) read from the file and the environment like the flat settings."""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path

import pytest

from bus import ConfigError, LoadEnvironmentVariables
from bus.config import BeatSettings, NotifySettings, ReconcileSettings, RiskSettings, safe_url
from bus.domain.notify import NotifyConfig
from bus.domain.reconcile import ReconcileConfig
from bus.domain.risk import RiskLimits
from celery_app.beat import beat_schedule

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
    *(
        var
        for group in (RiskSettings, NotifySettings, ReconcileSettings, BeatSettings)
        for var in group.variables().values()
    ),
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
    monkeypatch.setenv("REDIS_URL", "http://:hunter2@h:1/0")  # the refused URL itself
    with pytest.raises(ConfigError, match="REDIS_URL") as err:
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


GROUP_VARIABLES = {
    "TRADEBUS_RISK_MAX_ORDER_VOLUME": "5",
    "TRADEBUS_RISK_MAX_VOLUME_PER_SYMBOL": "XAUUSD=2, *=10",
    "TRADEBUS_RISK_STOP_LOSS_REQUIRED": "true",
    "TRADEBUS_WEBHOOK_URL": "http://a.example/h?token=t0ken, https://b.example/h",
    "TRADEBUS_WEBHOOK_SECRET": "hook-secret",
    "TRADEBUS_WEBHOOK_TIMEOUT": "2.5",
    "TRADEBUS_NOTIFY_TYPES": "risk.*",
    "TRADEBUS_NOTIFY_LOG": "false",
    "TRADEBUS_RECONCILE_STALE_ORDER_AGE": "600",
    "TRADEBUS_RECONCILE_LOG_MAXLEN": "5000",
    "TRADEBUS_BROKER_FACTORY": "venue.module:connect",
    "TRADEBUS_BEAT_REBUILD_INTERVAL": "900",
}


def test_a_env_file_configures_the_groups_exactly_as_the_environment_does(tmp_path, monkeypatch) -> None:
    # Given the same variables once in a .env file, once in the environment
    from_file = LoadEnvironmentVariables(write_env(tmp_path, "".join(f"{k}={v}\n" for k, v in GROUP_VARIABLES.items())))
    for var, value in GROUP_VARIABLES.items():
        monkeypatch.setenv(var, value)
    from_environment = LoadEnvironmentVariables(None)
    # Then both give the same settings, and the parts built from them are configured
    assert from_file == from_environment
    s = from_file
    assert RiskLimits.from_settings(s.risk) == RiskLimits(
        max_order_volume=Decimal(5),
        max_volume_per_symbol=Decimal(10),
        volume_per_symbol={"XAUUSD": Decimal(2)},
        stop_loss_required=True,
    )
    assert NotifyConfig.from_settings(s.notify) == NotifyConfig(
        webhook_urls=("http://a.example/h?token=t0ken", "https://b.example/h"),
        secret="hook-secret",
        timeout=2.5,
        event_types=("risk.*",),
        log_sink=False,
    )
    assert ReconcileConfig.from_settings(s.reconcile) == ReconcileConfig(stale_order_age=600, log_maxlen=5000)
    assert s.reconcile.broker_factory == "venue.module:connect"
    assert beat_schedule(s)["tradebus.reconcile.rebuild"]["schedule"] == 900.0
    assert "hook-secret" not in repr(s) and "t0ken" not in repr(s)


def test_in_the_groups_the_environment_wins_over_the_file_and_arguments_over_both(tmp_path, monkeypatch) -> None:
    env = write_env(
        tmp_path,
        "TRADEBUS_RISK_MAX_OPEN_POSITIONS=3\nTRADEBUS_RISK_MAX_DAILY_LOSS=100\nTRADEBUS_WEBHOOK_URL=http://hook.local/x\n"
        "TRADEBUS_RECONCILE_LOG_MAXLEN=10\nTRADEBUS_BEAT_TRIM_INTERVAL=10\nTRADEBUS_BEAT_BROKER_INTERVAL=10\n",
    )
    monkeypatch.setenv("TRADEBUS_RISK_MAX_OPEN_POSITIONS", "7")
    monkeypatch.setenv("TRADEBUS_BEAT_TRIM_INTERVAL", "20")
    monkeypatch.setenv("RISK", "not JSON")  # named like a group: not a setting
    s = LoadEnvironmentVariables(env)
    assert (s.risk.max_open_positions, s.risk.max_daily_loss) == (7, Decimal(100))
    assert s.notify.webhook_url == ("http://hook.local/x",) and s.reconcile.log_maxlen == 10
    assert (s.beat.trim_interval, s.beat.broker_interval) == (20.0, 10.0)
    s = LoadEnvironmentVariables(env, risk={"max_open_positions": 9})
    assert (s.risk.max_open_positions, s.risk.max_daily_loss) == (9, Decimal(100))
    assert LoadEnvironmentVariables(None).notify.webhook_url == ()


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("TRADEBUS_RISK_MAX_ORDER_VOLUME", "lots"),
        ("TRADEBUS_RISK_MAX_VOLUME_PER_SYMBOL", "XAUUSD=2,10"),
        ("TRADEBUS_RISK_MAX_VOLUME_PER_SYMBOL", "XAUUSD=two"),
        ("TRADEBUS_RISK_MAX_OPEN_POSITIONS", "2.5"),
        ("TRADEBUS_RISK_STOP_LOSS_REQUIRED", "maybe"),
        ("TRADEBUS_WEBHOOK_TIMEOUT", "soon"),
        ("TRADEBUS_NOTIFY_LOG", "maybe"),
        ("TRADEBUS_RECONCILE_LOG_MAXLEN", "lots"),
        ("TRADEBUS_RECONCILE_STALE_ORDER_AGE", "0"),
        ("TRADEBUS_BROKER_FACTORY", "module-without-callable"),
        ("TRADEBUS_BEAT_REBUILD_INTERVAL", "-5"),
    ],
)
@pytest.mark.parametrize("source", ["environment", "file"])
def test_a_bad_value_in_a_group_names_the_variable(tmp_path, monkeypatch, source: str, var: str, value: str) -> None:
    path = None
    if source == "file":
        path = write_env(tmp_path, f"{var}={value}\n")
    else:
        monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        LoadEnvironmentVariables(path)
    assert var in str(err.value)


def test_tls_settings_serve_a_rediss_bus_and_a_rediss_broker(tmp_path) -> None:
    from celery_app.config import celery_config

    env = write_env(tmp_path, "REDIS_URL=rediss://:pw@cache:6380/0\nREDIS_SSL_CA_CERTS=/etc/ca.pem\n")
    s = LoadEnvironmentVariables(env)
    assert s.broker_url.startswith("rediss://")
    conf = celery_config(s)
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/ca.pem"}
    assert "broker_use_ssl" not in celery_config(LoadEnvironmentVariables(None))
