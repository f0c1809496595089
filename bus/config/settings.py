"""Settings: one object, read from a .env file and the environment, that everything else takes.

Real environment variables override the file; a missing file is not an error; a malformed value
raises ConfigError naming the variable. Passwords are SecretStr and never appear in repr or logs.
The parts with variables of their own (risk limits, notifications, reconciliation, beat intervals) are
nested groups (bus.config.groups), read from the same file and environment under the same names. No
other module reads the environment: the two variables read outside Settings are at the end, with why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bus.config.groups import (
    BeatSettings,
    GroupedSource,
    LogRouteSettings,
    NotifySettings,
    ReconcileSettings,
    RiskSettings,
    groups_of,
)
from bus.config.topology import (
    CLUSTER_SCHEMES,
    KOMBU_SENTINEL_SCHEME,
    SENTINEL_SCHEMES,
    SINGLE_SCHEMES,
    Topology,
    parse_topology,
)
from bus.defaults import (
    BROKER_DB_OFFSET,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HEALTH_CHECK_INTERVAL,
    DEFAULT_KEY_PREFIX,
    DEFAULT_LOG_MAXLEN,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_SOCKET_TIMEOUT,
    DEFAULT_STATE_RETENTION,
)
from bus.errors import ConfigError


def _env(name: str) -> Any:
    return Field(None, validation_alias=name)


class Settings(BaseSettings):
    """Everything tradebus reads from the environment. Field docs name the variable."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    # Redis (the bus). REDIS_URL, when set, wins over the host/port/db/user/password parts. Besides one
    # server it may name a Sentinel master (redis+sentinel://h:p,h:p/name[/db]) or a Cluster
    # (redis+cluster://h:p,h:p): bus.config.topology.
    redis_url: SecretStr | None = _env("REDIS_URL")
    redis_host: str = Field("localhost", validation_alias="REDIS_HOST")
    redis_port: int = Field(6379, ge=1, le=65535, validation_alias="REDIS_PORT")
    redis_db: int = Field(0, ge=0, validation_alias="REDIS_DB")
    redis_username: str | None = _env("REDIS_USERNAME")
    redis_password: SecretStr | None = _env("REDIS_PASSWORD")
    # TLS: REDIS_SSL=true (or a rediss:// URL), with optional CA bundle and client certificate.
    redis_ssl: bool = Field(False, validation_alias="REDIS_SSL")
    redis_ssl_ca_certs: str | None = _env("REDIS_SSL_CA_CERTS")
    redis_ssl_certfile: str | None = _env("REDIS_SSL_CERTFILE")
    redis_ssl_keyfile: str | None = _env("REDIS_SSL_KEYFILE")
    redis_ssl_cert_reqs: str = Field("required", validation_alias="REDIS_SSL_CERT_REQS")
    redis_connect_timeout: float = Field(DEFAULT_CONNECT_TIMEOUT, gt=0, validation_alias="REDIS_CONNECT_TIMEOUT")
    redis_socket_timeout: float = Field(DEFAULT_SOCKET_TIMEOUT, gt=0, validation_alias="REDIS_SOCKET_TIMEOUT")
    redis_health_check_interval: int = Field(
        DEFAULT_HEALTH_CHECK_INTERVAL,
        ge=0,
        validation_alias="REDIS_HEALTH_CHECK_INTERVAL",
    )

    # Celery broker. Default: the bus's Redis, database REDIS_DB + 1. amqp:// works too.
    celery_broker_url: SecretStr | None = _env("CELERY_BROKER_URL")
    # The Sentinel master's name for a broker URL in kombu's spelling (sentinel://h:p/db;sentinel://...),
    # which names none. Default: the bus's, when the bus is a redis+sentinel:// URL.
    broker_master_name: str | None = _env("TRADEBUS_BROKER_MASTER_NAME")

    # RabbitMQ broker: declare the tradebus queues as quorum queues (replicated on a RabbitMQ cluster,
    # with a delivery limit as a second poison-message guard: celery_app.config). Off: classic queues.
    rabbitmq_quorum_queues: bool = Field(False, validation_alias="TRADEBUS_RABBITMQ_QUORUM_QUEUES")

    # Dispatch: publish() also enqueues the Celery tasks its routes pick (at-least-once tasks).
    # Off: log + broadcast only.
    dispatch: bool = Field(True, validation_alias="TRADEBUS_DISPATCH")
    # Strict: publish() raises DispatchError when the broker refuses, instead of leaving it to beat.
    dispatch_strict: bool = Field(False, validation_alias="TRADEBUS_DISPATCH_STRICT")
    # Extra routing rules (JSON or TOML), added to the default table; checked at start-up.
    routes_file: str | None = _env("TRADEBUS_ROUTES_FILE")
    # Module(s) that register custom event types (comma-separated), imported before events or routes are read.
    event_types_module: str | None = _env("TRADEBUS_EVENT_TYPES_MODULE")
    # Prefix of the broker's queue keys (kombu's global_keyprefix), to share one Redis between tenants.
    broker_key_prefix: str = Field("", validation_alias="TRADEBUS_BROKER_KEY_PREFIX")
    # Celery's task_send_sent_event for the bridge's own messages: a task-sent event per task (Flower's "sent").
    task_send_sent_event: bool = Field(False, validation_alias="TRADEBUS_TASK_SEND_SENT_EVENT")
    # Modules with your own routed tasks (comma-separated), imported by every tradebus Celery app (its include).
    task_modules: Annotated[tuple[str, ...], NoDecode] = Field((), validation_alias="TRADEBUS_TASK_MODULES")
    # Seconds within which a task held by a worker that died (SIGKILL, OOM, machine lost) runs on another one.
    worker_lost_timeout: float = Field(60.0, ge=3, validation_alias="TRADEBUS_WORKER_LOST_TIMEOUT")

    # Durability on a replicated Redis (bus.core.durability): publish() confirms an event only once this
    # many replicas have it (WAIT, in the publish's round trip), else raises NotReplicatedError after the
    # timeout. 0: confirmed when the master has it (a failover can lose it).
    publish_replicas: int = Field(0, ge=0, validation_alias="TRADEBUS_PUBLISH_REPLICAS")
    publish_replicas_timeout_ms: int = Field(1000, ge=1, validation_alias="TRADEBUS_PUBLISH_REPLICAS_TIMEOUT_MS")

    # Observability: a worker serves Prometheus /metrics on this port when set (bus.observability.metrics);
    # log lines as JSON objects with the event's fields when "json" (bus.observability.logs).
    metrics_port: int | None = Field(None, ge=1, le=65535, validation_alias="TRADEBUS_METRICS_PORT")
    log_format: Literal["text", "json"] = Field("text", validation_alias="TRADEBUS_LOG_FORMAT")

    # tradebus itself
    key_prefix: str = Field(DEFAULT_KEY_PREFIX, min_length=1, validation_alias="TRADEBUS_KEY_PREFIX")
    log_maxlen: int = Field(DEFAULT_LOG_MAXLEN, ge=1, validation_alias="TRADEBUS_LOG_MAXLEN")
    max_event_bytes: int = Field(DEFAULT_MAX_EVENT_BYTES, ge=256, validation_alias="TRADEBUS_MAX_EVENT_BYTES")
    # Seconds finished orders / positions and breach markers are kept (0: forever); bounds memory.
    state_retention: int = Field(DEFAULT_STATE_RETENTION, ge=0, validation_alias="TRADEBUS_STATE_RETENTION")

    # The parts configured by variables of their own, gathered by GroupedSource. NoDecode: a variable
    # named like a group (RISK=...) is not JSON to decode; GroupedSource drops it.
    risk: Annotated[RiskSettings, NoDecode] = Field(default_factory=RiskSettings)
    notify: Annotated[NotifySettings, NoDecode] = Field(default_factory=NotifySettings)
    reconcile: Annotated[ReconcileSettings, NoDecode] = Field(default_factory=ReconcileSettings)
    beat: Annotated[BeatSettings, NoDecode] = Field(default_factory=BeatSettings)
    log_routes: Annotated[LogRouteSettings, NoDecode] = Field(default_factory=LogRouteSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # pydantic-settings passes its EnvSettingsSource and DotEnvSettingsSource (a subclass) here
        return (
            init_settings,
            GroupedSource(settings_cls, cast(EnvSettingsSource, env_settings)),
            GroupedSource(settings_cls, cast(EnvSettingsSource, dotenv_settings)),
            file_secret_settings,
        )

    @field_validator("task_modules", mode="before")
    @classmethod
    def _v_task_modules(cls, v: Any) -> Any:
        names = tuple(p.strip() for p in v.split(",") if p.strip()) if isinstance(v, str) else v
        for name in names if isinstance(names, tuple | list) else ():
            if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
                raise ValueError(f"{name!r} is not a module name (comma-separated dotted names)")
        return names

    @field_validator("redis_ssl_cert_reqs")
    @classmethod
    def _v_cert_reqs(cls, v: str) -> str:
        if v not in ("required", "optional", "none"):
            raise ValueError("must be one of required, optional, none")
        return v

    @field_validator("redis_url", "celery_broker_url")
    @classmethod
    def _v_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return None
        scheme = urlsplit(v.get_secret_value()).scheme
        if scheme not in ("redis", "rediss", "unix", "redis+socket", "amqp", "amqps", "pyamqp", "memory",
                          KOMBU_SENTINEL_SCHEME, *SENTINEL_SCHEMES, *CLUSTER_SCHEMES):  # fmt: skip
            raise ValueError(f"unsupported URL scheme {scheme!r}")
        if scheme in SENTINEL_SCHEMES + CLUSTER_SCHEMES:
            parse_topology(v.get_secret_value())  # malformed: ValueError names the problem, not the password
        return v

    @model_validator(mode="after")
    def _v_bus_url(self) -> Settings:
        if self.redis_url is not None:
            scheme = urlsplit(self.redis_url.get_secret_value()).scheme
            if scheme not in SINGLE_SCHEMES + SENTINEL_SCHEMES + CLUSTER_SCHEMES:
                raise ValueError(
                    "REDIS_URL must be redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://,"
                    f" not {scheme}://"
                )
        topology = self.topology
        if self.dispatch and self.celery_broker_url is None and topology is not None and topology.kind == "cluster":
            raise ValueError(
                "REDIS_URL is a Redis Cluster, which cannot be the Celery broker: set CELERY_BROKER_URL"
                " (amqp:// or a separate redis://) or TRADEBUS_DISPATCH=false"
            )
        if self.celery_broker_url is not None:
            broker_scheme = urlsplit(self.celery_broker_url.get_secret_value()).scheme
            if broker_scheme in CLUSTER_SCHEMES:
                raise ValueError("CELERY_BROKER_URL cannot be a Redis Cluster: kombu has no Cluster transport")
            if broker_scheme == KOMBU_SENTINEL_SCHEME and self.broker_sentinel_master() is None:
                raise ValueError(
                    "a sentinel:// CELERY_BROKER_URL names no master: set TRADEBUS_BROKER_MASTER_NAME"
                    " (or use redis+sentinel://host:port/master_name/db)"
                )
        return self

    # --- derived -----------------------------------------------------------------------------------

    @property
    def bus_url(self) -> str:
        """The Redis URL the bus connects to (contains the password: never log it, use safe_url)."""
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        return self._compose_url(self.redis_db)

    @property
    def topology(self) -> Topology | None:
        """The bus's Sentinel or Cluster deployment, or None for one server."""
        url = self.bus_url
        return parse_topology(url) if urlsplit(url).scheme in SENTINEL_SCHEMES + CLUSTER_SCHEMES else None

    @property
    def broker_url(self) -> str:
        """The Celery broker URL in kombu's spelling (may contain a password: never log it). A Sentinel
        broker is ``sentinel://...``: celery_config passes broker_sentinel_master() as ``master_name``."""
        if self.celery_broker_url is not None:
            url = self.celery_broker_url.get_secret_value()
            if urlsplit(url).scheme in SENTINEL_SCHEMES:
                broker = parse_topology(url)
                return broker.kombu_url(broker.db)
            return url
        topology = self.topology
        if topology is not None:  # a Cluster is refused above unless CELERY_BROKER_URL is set
            return topology.kombu_url(topology.db + BROKER_DB_OFFSET)
        parts = urlsplit(self.bus_url)
        if parts.scheme == "unix":
            return f"redis+socket://{parts.path}?virtual_host={self._bus_db() + BROKER_DB_OFFSET}"
        return urlunsplit(parts._replace(path=f"/{self._bus_db() + BROKER_DB_OFFSET}"))

    def broker_sentinel_master(self) -> str | None:
        """The master name kombu needs for a Sentinel broker (None when the broker is not one)."""
        url = self.celery_broker_url.get_secret_value() if self.celery_broker_url is not None else None
        if url is not None and urlsplit(url).scheme in SENTINEL_SCHEMES:
            return parse_topology(url).service_name
        bus = self.topology if self.redis_url is not None else None
        bus_master = bus.service_name if bus is not None and bus.kind == "sentinel" else None
        if url is None:
            return bus_master
        if urlsplit(url).scheme == KOMBU_SENTINEL_SCHEME:
            return self.broker_master_name or bus_master
        return None

    def _bus_db(self) -> int:
        if self.redis_url is None:
            return self.redis_db
        parts = urlsplit(self.redis_url.get_secret_value())
        path = parts.path.strip("/")
        if parts.scheme == "unix":
            for q in parts.query.split("&"):
                if q.startswith("db="):
                    return int(q[3:])
            return 0
        return int(path) if path.isdigit() else 0

    def _compose_url(self, db: int) -> str:
        scheme = "rediss" if self.redis_ssl else "redis"
        auth = ""
        if self.redis_password is not None and self.redis_password.get_secret_value():
            user = quote(self.redis_username or "", safe="")
            auth = f"{user}:{quote(self.redis_password.get_secret_value(), safe='')}@"
        elif self.redis_username:
            auth = f"{quote(self.redis_username, safe='')}@"
        return f"{scheme}://{auth}{self.redis_host}:{self.redis_port}/{db}"

    def ssl_options(self, url: str | None = None) -> dict[str, Any]:
        """redis-py TLS arguments (REDIS_SSL_*) when ``url`` (default: the bus URL) is rediss://;
        the same certificates serve a rediss:// Celery broker and a Sentinel's or Cluster's nodes."""
        if not urlsplit(url or self.bus_url).scheme.startswith("rediss"):  # rediss+sentinel, rediss+cluster too
            return {}
        opts: dict[str, Any] = {"ssl_cert_reqs": self.redis_ssl_cert_reqs}
        if self.redis_ssl_ca_certs:
            opts["ssl_ca_certs"] = self.redis_ssl_ca_certs
        if self.redis_ssl_certfile:
            opts["ssl_certfile"] = self.redis_ssl_certfile
        if self.redis_ssl_keyfile:
            opts["ssl_keyfile"] = self.redis_ssl_keyfile
        return opts

    def __repr_args__(self) -> Any:
        yield from super().__repr_args__()
        yield "bus_url", safe_url(self.bus_url)


def safe_url(url: str) -> str:
    """The URL with its password replaced by ``***`` — the only form that may be logged."""
    if ";" in url:  # kombu's failover lists (sentinel://...;sentinel://...): each URL has its password
        return ";".join(safe_url(one) for one in url.split(";"))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    # the hosts as written: a Sentinel or Cluster URL lists several (h:p,h:p), which .port cannot read
    hosts = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def LoadEnvironmentVariables(path: str | Path | None = ".env", **overrides: Any) -> Settings:  # noqa: N802
    """Read settings from ``path`` (if it exists) and the environment; the environment wins.

    Named as in the reference README. Keyword arguments override both (handy in tests).
    """
    env_file = Path(path) if path is not None else None
    try:
        if env_file is not None and env_file.is_file():
            return Settings(_env_file=env_file, _env_file_encoding="utf-8", **overrides)  # type: ignore[call-arg]
        return Settings(**overrides)
    except ValidationError as e:
        raise _config_error(e) from None


def _config_error(e: ValidationError) -> ConfigError:
    problems = []
    for err in e.errors():
        loc = [str(part) for part in err["loc"]]
        var = _variable(loc)
        value = err.get("input")
        if isinstance(value, str) and any(word in var.lower() for word in ("password", "url", "secret")):
            value = "***"
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{var}={value!r}: {msg}" if loc else msg)
    return ConfigError("invalid configuration: " + "; ".join(problems))


def _variable(loc: list[str]) -> str:
    """The variable an error location points at: ``["REDIS_PORT"]``, ``["redis_port"]``, ``["risk",
    "max_order_volume"]`` (a group's field), ``["risk", "max_volume_per_symbol", "XAUUSD"]``."""
    if not loc:
        return "settings"
    if loc[0] in _GROUPS and len(loc) > 1:
        variable = _GROUPS[loc[0]].variables().get(loc[1], loc[1])
        return variable + "".join(f"[{key}]" for key in loc[2:])
    return _VARIABLE_OF.get(loc[0], loc[0].upper())


_VARIABLE_OF = {
    name: field.validation_alias if isinstance(field.validation_alias, str) else name.upper()
    for name, field in Settings.model_fields.items()
}
_GROUPS = groups_of(Settings)


# --- read outside Settings ----------------------------------------------------------------------------


def debug_requested() -> bool:
    """TRADEBUS_DEBUG set to anything: the CLI lets an unexpected error end in its traceback. Read on
    its own, not through Settings: the error being reported may be that the settings failed to load."""
    return bool(os.environ.get("TRADEBUS_DEBUG"))


def state_home() -> Path:
    """$XDG_STATE_HOME, else ~/.local/state: where local state lives (the executor's outbox). The
    desktop's base-directory variable, not a tradebus setting, so a .env file does not set it."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
