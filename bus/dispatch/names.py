"""Every Celery queue and task name tradebus declares, in one place (the worker, the routing table,
beat, the CLI and the docs read them from here).

One queue per concern, so operators can scale state, risk, notify and reconcile apart; task names are
``tradebus.<queue concern>.<verb>``.
"""

from __future__ import annotations

# queues
STATE_QUEUE = "tradebus.state"
RISK_QUEUE = "tradebus.risk"
NOTIFY_QUEUE = "tradebus.notify"
RECONCILE_QUEUE = "tradebus.reconcile"
#: every queue tradebus itself declares, in the order workers list them
QUEUES = (STATE_QUEUE, RISK_QUEUE, NOTIFY_QUEUE, RECONCILE_QUEUE)

# routed tasks (called as task(event_json, route=name) with id "{event_id}:{route}")
STATE_TASK = "tradebus.state.apply"
RISK_TASK = "tradebus.risk.check"
NOTIFY_TASK = "tradebus.notify.send"

# beat jobs (reconciliation), by job name
RECONCILE_TASKS = {
    "redispatch": "tradebus.reconcile.redispatch",
    "rebuild": "tradebus.reconcile.rebuild",
    "stale_orders": "tradebus.reconcile.stale_orders",
    "broker": "tradebus.reconcile.broker",
    "trim": "tradebus.reconcile.trim",
}
