"""Risk checks: configurable limits evaluated per event; a breach is published exactly once per rule
and event.

Rules (a limit left ``None`` is off):

- ``max_order_volume``: the volume of ORDER_CREATED / ORDER_MODIFIED;
- ``stop_loss_required``: ORDER_CREATED and POSITION_OPENED must carry ``sl`` / ``stop_loss``;
- ``max_volume_per_symbol``: gross volume of the symbol's active positions, with the event's own
  position replaced by the event's volume (POSITION_OPENED / _MODIFIED), or plus the new order's volume
  (ORDER_CREATED, unless it names a ``position_id`` or is ``reduce_only``: it closes, not opens);
- ``max_open_positions``: active positions over every symbol, on POSITION_OPENED;
- ``max_daily_loss``: net realised pnl of the UTC day of the event (POSITION_CLOSED /
  _PARTIALLY_CLOSED ``pnl``, each event counted once, in integer units — INCRBYFLOAT drifts) below
  ``-max_daily_loss``.

Evaluation reads the state projection, which the state task may or may not have updated with this very
event yet; the rules exclude the event's own entity so both orders give the same answer.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import redis

from bus.config import RiskSettings
from bus.core.keys import Keys
from bus.core.state import active_positions
from bus.defaults import DEFAULT_STATE_RETENTION
from bus.errors import ConfigError
from bus.events.model import TradeEvent, TradeEventType

log = logging.getLogger(__name__)

T = TradeEventType
# Money is counted in 1e-8 units: exact for any price with up to 8 decimals, and HINCRBY stays in 64 bits.
PNL_SCALE = Decimal("1e8")
# Seconds a day's realised-pnl hash is kept after its last update.
DAILY_PNL_TTL_SECONDS = 3 * 24 * 3600
# Namespace of the deterministic ids of breach events: the same (rule, event) always has the same id.
BREACH_NAMESPACE = uuid.UUID("6f1c1b9e-3c52-4b7e-9a61-0d4f7b1e2a10")
RULES = ("max_order_volume", "stop_loss_required", "max_volume_per_symbol", "max_open_positions", "max_daily_loss")
_SL_FIELDS = ("sl", "stop_loss")


def _dec(value: Any, what: str) -> Decimal:
    try:
        d = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ConfigError(f"{what}={value!r}: not a number") from None
    if not d.is_finite() or d < 0:
        raise ConfigError(f"{what}={value!r}: must be a finite number >= 0")
    return d


@dataclass(frozen=True)
class RiskLimits:
    """Limits; ``None`` switches a rule off. ``volume_per_symbol`` overrides ``max_volume_per_symbol``
    for single symbols."""

    max_order_volume: Decimal | None = None
    max_volume_per_symbol: Decimal | None = None
    volume_per_symbol: Mapping[str, Decimal] = field(default_factory=dict)
    max_open_positions: int | None = None
    max_daily_loss: Decimal | None = None
    stop_loss_required: bool = False

    def symbol_volume_limit(self, symbol: str) -> Decimal | None:
        return self.volume_per_symbol.get(symbol, self.max_volume_per_symbol)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RiskLimits:
        """``{"max_order_volume": "5", "max_volume_per_symbol": {"XAUUSD": "2", "*": "10"}, ...}``."""
        known = {
            "max_order_volume",
            "max_volume_per_symbol",
            "max_open_positions",
            "max_daily_loss",
            "stop_loss_required",
        }
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown risk limit(s) {sorted(unknown)}; known: {sorted(known)}")
        kw: dict[str, Any] = {}
        for name in ("max_order_volume", "max_daily_loss"):
            if data.get(name) not in (None, ""):
                kw[name] = _dec(data[name], name)
        per_symbol = data.get("max_volume_per_symbol")
        if isinstance(per_symbol, Mapping):
            table = {str(k): _dec(v, f"max_volume_per_symbol[{k}]") for k, v in per_symbol.items()}
            kw["max_volume_per_symbol"] = table.pop("*", None)
            kw["volume_per_symbol"] = table
        elif per_symbol not in (None, ""):
            kw["max_volume_per_symbol"] = _dec(per_symbol, "max_volume_per_symbol")
        if data.get("max_open_positions") not in (None, ""):
            n = _dec(data["max_open_positions"], "max_open_positions")
            if n != n.to_integral_value():
                raise ConfigError(f"max_open_positions={data['max_open_positions']!r}: must be an integer")
            kw["max_open_positions"] = int(n)
        sl = data.get("stop_loss_required", False)
        kw["stop_loss_required"] = sl if isinstance(sl, bool) else str(sl).strip().lower() in ("1", "true", "yes", "on")
        return cls(**kw)

    @classmethod
    def from_settings(cls, risk: RiskSettings) -> RiskLimits:
        """The limits TRADEBUS_RISK_* configure (``settings.risk``, validated when the settings loaded)."""
        return cls.from_dict(risk.model_dump(exclude_none=True))


@dataclass(frozen=True)
class Breach:
    rule: str
    symbol: str
    limit: Decimal
    value: Decimal
    event_id: str
    event_type: str
    message: str
    raised: bool = False  # True when this call published it (False: already raised before / not published)

    @property
    def breach_id(self) -> str:
        """Deterministic id of the RISK_LIMIT_BREACHED event for this (rule, event)."""
        return uuid.uuid5(BREACH_NAMESPACE, f"{self.rule}|{self.event_id}").hex

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "symbol": self.symbol,
            "limit": str(self.limit),
            "value": str(self.value),
            "event_id": self.event_id,
            "event_type": self.event_type,
            "message": self.message,
            "raised": self.raised,
            "breach_id": self.breach_id,
        }


# --- evaluation ------------------------------------------------------------------------------------


def known_symbols(client: redis.Redis, keys: Keys, extra: str | None = None) -> list[str]:
    """Every symbol with a log (plus ``extra``), sorted."""
    symbols = {s.decode() if isinstance(s, bytes) else str(s) for s in client.smembers(keys.symbols())}
    if extra:
        symbols.add(extra)
    return sorted(symbols)


def _volume(data: Mapping[str, Any], *names: str) -> Decimal | None:
    for name in names:
        value = data.get(name)
        if value not in (None, ""):
            try:
                return Decimal(str(value))
            except InvalidOperation:
                return None
    return None


def _position_volume(pos: Mapping[str, Any]) -> Decimal:
    return _volume(pos, "remaining_volume", "volume") or Decimal(0)


def _breach(rule: str, event: TradeEvent, limit: Decimal, value: Decimal, why: str) -> Breach:
    return Breach(rule, event.symbol, limit, value, event.event_id, event.event_type.value, why)


_DAILY_PNL = """
if redis.call('HSETNX', KEYS[1], 'e:' .. ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'total', ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('HGET', KEYS[1], 'total') or '0'
"""


def record_realised_pnl(client: redis.Redis, keys: Keys, event: TradeEvent) -> Decimal:
    """Add the event's ``pnl`` to its UTC day's total (once per event id); return the day's net pnl."""
    pnl = Decimal(str(event.data.get("pnl", 0)))
    units = int((pnl * PNL_SCALE).to_integral_value())
    day = event.timestamp[:10]
    total = client.eval(_DAILY_PNL, 1, keys.daily_loss(day), event.event_id, units, DAILY_PNL_TTL_SECONDS)
    return Decimal(int(total)) / PNL_SCALE


def daily_realised_pnl(client: redis.Redis, keys: Keys, day: str) -> Decimal:
    """Net realised pnl recorded for ``day`` (``YYYY-MM-DD``, UTC): the risk task's total plus the risk log
    route's per-symbol totals (bus.domain.risklog)."""
    return Decimal(daily_pnl_units(client, keys, day)) / PNL_SCALE


def daily_pnl_units(client: redis.Redis, keys: Keys, day: str, *, without: str | None = None) -> int:
    """``day``'s realised pnl in PNL_SCALE units: the global total and every known symbol's (but
    ``without``'s), read in one pipeline (on a Redis Cluster it spans the masters)."""
    pipe = client.pipeline(transaction=False)
    pipe.hget(keys.daily_loss(day), "total")
    for symbol in known_symbols(client, keys):
        if symbol != without:
            pipe.hget(keys.symbol_daily_loss(symbol, day), "total")
    return sum(int(total or 0) for total in pipe.execute())


def evaluate(
    client: redis.Redis,
    keys: Keys,
    event: TradeEvent,
    limits: RiskLimits,
    record_pnl: Callable[[redis.Redis, Keys, TradeEvent], Decimal] | None = None,
) -> list[Breach]:
    """Every rule the event breaks (without publishing). Records realised pnl with ``record_pnl``
    (default: ``record_realised_pnl``, idempotently; log routes stage it in their batch instead)."""
    t, data, out = event.event_type, event.data, []
    if t in (T.ORDER_CREATED, T.ORDER_MODIFIED) and limits.max_order_volume is not None:
        vol = _volume(data, "volume")
        if vol is not None and vol > limits.max_order_volume:
            out.append(
                _breach(
                    "max_order_volume",
                    event,
                    limits.max_order_volume,
                    vol,
                    f"order {data.get('order_id')} volume {vol} > {limits.max_order_volume}",
                )
            )
    needs_stop = t in (T.ORDER_CREATED, T.POSITION_OPENED) and limits.stop_loss_required
    if needs_stop and all(data.get(f) in (None, "", 0) for f in _SL_FIELDS):
        ident = data.get("order_id") or data.get("position_id")
        out.append(_breach("stop_loss_required", event, Decimal(1), Decimal(0), f"{t.value} {ident} has no stop loss"))
    cap = limits.symbol_volume_limit(event.symbol)
    if cap is not None and t in (T.ORDER_CREATED, T.POSITION_OPENED, T.POSITION_MODIFIED):
        exposure = _exposure_after(client, keys, event)
        if exposure is not None and exposure > cap:
            out.append(
                _breach(
                    "max_volume_per_symbol", event, cap, exposure, f"{event.symbol} volume would be {exposure} > {cap}"
                )
            )
    if t is T.POSITION_OPENED and limits.max_open_positions is not None:
        own = data["position_id"]
        count = 1 + sum(
            1
            for sym in known_symbols(client, keys, extra=event.symbol)
            for p in active_positions(client, keys, sym)
            if not (sym == event.symbol and p.get("position_id") == own)
        )
        if count > limits.max_open_positions:
            out.append(
                _breach(
                    "max_open_positions",
                    event,
                    Decimal(limits.max_open_positions),
                    Decimal(count),
                    f"{count} open positions > {limits.max_open_positions}",
                )
            )
    if t in (T.POSITION_CLOSED, T.POSITION_PARTIALLY_CLOSED) and data.get("pnl") is not None:
        net = (record_pnl or record_realised_pnl)(client, keys, event)
        if limits.max_daily_loss is not None and -net > limits.max_daily_loss:
            out.append(
                _breach(
                    "max_daily_loss",
                    event,
                    limits.max_daily_loss,
                    -net,
                    f"realised loss {-net} on {event.timestamp[:10]} > {limits.max_daily_loss}",
                )
            )
    return out


def _exposure_after(client: redis.Redis, keys: Keys, event: TradeEvent) -> Decimal | None:
    data = event.data
    if event.event_type is T.ORDER_CREATED and (data.get("position_id") or data.get("reduce_only")):
        return None
    vol = _volume(data, "volume")
    if vol is None:
        return None
    own = data.get("position_id")
    others = sum(
        (
            _position_volume(p)
            for p in active_positions(client, keys, event.symbol)
            if own is None or p.get("position_id") != own
        ),
        Decimal(0),
    )
    return others + vol


# --- raising ---------------------------------------------------------------------------------------

Publish = Callable[[TradeEvent], Any]


def breach_event(breach: Breach, cause: TradeEvent) -> TradeEvent:
    """The RISK_LIMIT_BREACHED event for ``breach``: caused by ``cause``, in its correlation."""
    extra: dict[str, Any] = {
        "message": breach.message,
        "limit_exact": str(breach.limit),
        "value_exact": str(breach.value),
        "offending_event_type": breach.event_type,
    }
    for name in ("order_id", "position_id"):
        if cause.data.get(name):
            extra[name] = cause.data[name]
    return TradeEvent.create_risk_limit_breached(
        cause.symbol,
        breach.rule,
        float(breach.limit),
        float(breach.value),
        event_id=breach.breach_id,
        causation_id=cause.event_id,
        correlation_id=cause.correlation_id or cause.event_id,
        source="tradebus.risk",
        **extra,
    )


def raise_breaches(
    client: redis.Redis,
    keys: Keys,
    event: TradeEvent,
    breaches: list[Breach],
    publish: Publish,
    retention: int = DEFAULT_STATE_RETENTION,
) -> list[Breach]:
    """Publish each breach unless already raised. Its (rule, event) marker is SET NX first, so
    concurrent or repeated checks publish once; if publishing fails the marker is removed and the
    error propagates (the task retries). The marker expires after ``retention`` seconds (0: never):
    a check of the same event repeated later than that would raise the breach again."""
    out = []
    for b in breaches:
        marker = keys.breach(b.rule, b.event_id)
        if not client.set(marker, 1, nx=True, ex=retention or None):
            out.append(b)
            continue
        try:
            publish(breach_event(b, event))
        except BaseException:
            client.delete(marker)
            raise
        log.warning("risk breach %s on %s: %s", b.rule, b.symbol, b.message)
        out.append(Breach(**{**b.__dict__, "raised": True}))
    return out


def check_event(
    client: redis.Redis,
    keys: Keys,
    event: TradeEvent,
    limits: RiskLimits,
    publish: Publish | None = None,
    retention: int = DEFAULT_STATE_RETENTION,
) -> list[Breach]:
    """Evaluate ``event``; with ``publish`` (e.g. ``RedisEventBus.publish``), raise new breaches
    (each once per rule and event within ``retention`` seconds; 0: forever)."""
    breaches = evaluate(client, keys, event, limits)
    if publish is None or not breaches:
        return breaches
    return raise_breaches(client, keys, event, breaches, publish, retention)
