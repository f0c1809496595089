"""The trading side: ``ExecutorBuilder.build_from_config`` (as in the reference README), the order
executor, the trading-venue protocol and its paper venue, the outbox, the kill switch."""

from bus.executor.builder import ExecutorBuilder, ExecutorConfig, TradeExecutor
from bus.executor.killswitch import engage_kill_switch, kill_switch_reason, kill_switches, release_kill_switch
from bus.executor.orders import OrderExecutor, OrderTicket

__all__ = [
    "ExecutorBuilder",
    "ExecutorConfig",
    "OrderExecutor",
    "OrderTicket",
    "TradeExecutor",
    "engage_kill_switch",
    "kill_switch_reason",
    "kill_switches",
    "release_kill_switch",
]
