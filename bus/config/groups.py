"""Settings groups: the settings of one part (risk limits, notifications, reconciliation, beat), nested
in bus.config.Settings and read with it from the same .env file and environment. Each field's
``validation_alias`` names its variable, as before the groups existed (TRADEBUS_RISK_MAX_ORDER_VOLUME...).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource


def _variable(name: str) -> Any:
    return Field(None, validation_alias=name)


_Amount = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
_Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class SettingsGroup(BaseModel):
    """Settings of one part, nested in Settings; each field's ``validation_alias`` is its variable.
    A blank variable counts as unset; unset fields (None) leave the part's own default."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Field name -> variable name."""
        return {name: str(f.validation_alias) for name, f in cls.model_fields.items()}


def _comma_separated(value: Any) -> Any:
    return tuple(p.strip() for p in value.split(",") if p.strip()) if isinstance(value, str) else value


class RiskSettings(SettingsGroup):
    """The risk task's limits (bus.domain.risk.RiskLimits); an unset limit switches its rule off."""

    max_order_volume: _Amount | None = _variable("TRADEBUS_RISK_MAX_ORDER_VOLUME")
    # ``10`` (every symbol) or ``XAUUSD=2,*=10`` (per symbol, ``*`` for the others)
    max_volume_per_symbol: dict[str, _Amount] = Field({}, validation_alias="TRADEBUS_RISK_MAX_VOLUME_PER_SYMBOL")
    max_open_positions: int | None = Field(None, ge=0, validation_alias="TRADEBUS_RISK_MAX_OPEN_POSITIONS")
    max_daily_loss: _Amount | None = _variable("TRADEBUS_RISK_MAX_DAILY_LOSS")
    stop_loss_required: bool = Field(False, validation_alias="TRADEBUS_RISK_STOP_LOSS_REQUIRED")

    @field_validator("max_volume_per_symbol", mode="before")
    @classmethod
    def _v_per_symbol(cls, v: Any) -> Any:
        if isinstance(v, int | float | Decimal) or (isinstance(v, str) and "=" not in v):
            return {"*": v}
        if not isinstance(v, str):
            return v
        table = {}
        for pair in _comma_separated(v):
            symbol, equals, volume = pair.partition("=")
            if not equals or not symbol.strip():
                raise ValueError("expected a volume, or SYMBOL=VOLUME pairs such as XAUUSD=2,*=10")
            table[symbol.strip()] = volume.strip()
        return table


class NotifySettings(SettingsGroup):
    """The notify task's sinks and filter (bus.domain.notify.NotifyConfig)."""

    # comma-separated; kept out of repr: webhook URLs often carry a token
    webhook_url: tuple[str, ...] = Field((), repr=False, validation_alias="TRADEBUS_WEBHOOK_URL")
    webhook_secret: SecretStr | None = _variable("TRADEBUS_WEBHOOK_SECRET")
    webhook_timeout: _Seconds | None = _variable("TRADEBUS_WEBHOOK_TIMEOUT")
    # comma-separated event type patterns such as ``risk.*``; unset: every event routed to notify
    notify_types: tuple[str, ...] = Field((), validation_alias="TRADEBUS_NOTIFY_TYPES")
    notify_log: bool = Field(True, validation_alias="TRADEBUS_NOTIFY_LOG")

    _v_lists = field_validator("webhook_url", "notify_types", mode="before")(_comma_separated)


class ReconcileSettings(SettingsGroup):
    """The reconciliation jobs' ages in seconds and log limits (bus.domain.reconcile.ReconcileConfig)."""

    redispatch_grace: _Seconds | None = _variable("TRADEBUS_RECONCILE_REDISPATCH_GRACE")
    rebuild_grace: _Seconds | None = _variable("TRADEBUS_RECONCILE_REBUILD_GRACE")
    stale_order_age: _Seconds | None = _variable("TRADEBUS_RECONCILE_STALE_ORDER_AGE")
    log_retention: _Seconds | None = _variable("TRADEBUS_RECONCILE_LOG_RETENTION")
    log_maxlen: PositiveInt | None = _variable("TRADEBUS_RECONCILE_LOG_MAXLEN")
    lease_ttl_ms: PositiveInt | None = _variable("TRADEBUS_RECONCILE_LEASE_TTL_MS")
    # ``module:callable`` returning the broker whose positions the broker job compares with the state
    broker_factory: str | None = Field(None, pattern=r"^[\w.]+:\w+$", validation_alias="TRADEBUS_BROKER_FACTORY")


class BeatSettings(SettingsGroup):
    """Seconds between two runs of each reconciliation job (celery_app.beat.JOBS has the defaults)."""

    redispatch_interval: _Seconds | None = _variable("TRADEBUS_BEAT_REDISPATCH_INTERVAL")
    rebuild_interval: _Seconds | None = _variable("TRADEBUS_BEAT_REBUILD_INTERVAL")
    stale_orders_interval: _Seconds | None = _variable("TRADEBUS_BEAT_STALE_ORDERS_INTERVAL")
    broker_interval: _Seconds | None = _variable("TRADEBUS_BEAT_BROKER_INTERVAL")
    trim_interval: _Seconds | None = _variable("TRADEBUS_BEAT_TRIM_INTERVAL")


def groups_of(settings_cls: type[BaseModel]) -> dict[str, type[SettingsGroup]]:
    """The fields of ``settings_cls`` that are groups: ``{"risk": RiskSettings, ...}``."""
    return {
        name: field.annotation
        for name, field in settings_cls.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, SettingsGroup)
    }


class GroupedSource(PydanticBaseSettingsSource):
    """One source of variables (the environment, or the .env file) with the groups' variables gathered
    into their groups, ``{"risk": {"max_order_volume": "5"}, ...}``: pydantic-settings then merges the
    environment over the file variable by variable, as it does for the flat fields."""

    def __init__(self, settings_cls: type[BaseSettings], source: EnvSettingsSource) -> None:
        super().__init__(settings_cls)
        self.source = source
        self.groups = groups_of(settings_cls)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the source's variables

    def __call__(self) -> dict[str, Any]:
        data = {name: value for name, value in self.source().items() if name not in self.groups}
        found = self.source.env_vars  # names lower-cased: the settings are case-insensitive
        for name, group in self.groups.items():
            values = {}
            for field, variable in group.variables().items():
                raw = found.get(variable.lower())
                if raw is not None and raw.strip():
                    values[field] = raw.strip()
            if values:
                data[name] = values
        return data
