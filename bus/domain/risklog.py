"""Risk as a log-route effect: the rules of bus/domain/risk.py over a batch, in log order.

Each breach is published in the batch's transaction (``batch.publish``): logged, broadcast and routed
(to notify) exactly when the batch's entries are acknowledged, so it is raised once per rule and event
without a record of raised breaches. Realised pnl is added to its day's total in the same transaction,
without per-event markers, in the symbol's own day total (its slot); the events of one batch see each
other's pnl through a running total.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from decimal import Decimal
from functools import partial

import redis

from bus.core.keys import Keys
from bus.dispatch.logroutes.effects import Batch
from bus.domain.risk import (
    DAILY_PNL_TTL_SECONDS,
    PNL_SCALE,
    Breach,
    RiskLimits,
    breach_event,
    daily_pnl_units,
    evaluate,
)
from bus.events.model import TradeEvent

log = logging.getLogger("tradebus.risk")


class _DayTotals:
    """Realised pnl per UTC day. The batch's symbol keeps its own total per day in its slot
    (``keys.symbol_daily_loss``), written in the batch's transaction: effects and acknowledgements stay
    in one Redis Cluster slot (effectively-once effects). The day's net adds the other symbols' totals
    and the risk task's, read once per batch like every read of the rules (another symbol's drainer may
    commit meanwhile, as before)."""

    def __init__(self, batch: Batch) -> None:
        self.tx, self.symbol = batch.tx, batch.symbol
        self.others: dict[str, int] = {}
        self.own: dict[str, int] = {}

    def record(self, client: redis.Redis, keys: Keys, event: TradeEvent) -> Decimal:
        units = int((Decimal(str(event.data.get("pnl", 0))) * PNL_SCALE).to_integral_value())
        day = event.timestamp[:10]
        key = keys.symbol_daily_loss(self.symbol, day)
        if day not in self.own:
            self.others[day] = daily_pnl_units(client, keys, day, without=self.symbol)
            self.own[day] = int(client.hget(key, "total") or 0)
        self.own[day] += units
        self.tx.hincrby(key, "total", units)
        self.tx.expire(key, DAILY_PNL_TTL_SECONDS)
        return Decimal(self.others[day] + self.own[day]) / PNL_SCALE


def _logged(breach: Breach, _results: object) -> None:
    log.warning("risk breach %s on %s: %s", breach.rule, breach.symbol, breach.message)


def check_batch(batch: Batch, limits: RiskLimits) -> list[Breach]:
    """Evaluate every entry; publish each breach with the batch. Returns the breaches raised."""
    totals, raised = _DayTotals(batch), []
    for entry in batch.entries:
        for breach in evaluate(batch.client, batch.keys, entry.event, limits, record_pnl=totals.record):
            batch.publish(breach_event(breach, entry.event))
            batch.after_commit(partial(_logged, breach))
            raised.append(replace(breach, raised=True))
    return raised
