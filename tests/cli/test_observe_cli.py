"""`tradebus metrics` and `tradebus top --once` against a live bus."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.dispatch.deadletters import dead_letter
from bus.events.model import TradeEvent
from bus.executor.killswitch import engage_kill_switch

pytestmark = pytest.mark.redis


def _tradebus(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bus.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)  # fmt: skip


def test_metrics_prints_the_redis_side_gauges(
    env: dict[str, str], redis_client: redis.Redis, key_prefix: str, symbol: str
) -> None:
    keys = Keys(key_prefix)
    engage_kill_switch(redis_client, keys, symbol, "test")
    for i in range(2):
        dead_letter(redis_client, keys, event_json="{}", route="state", task="t", attempts=1, reason=f"r{i}")
    with RedisEventBus(env["REDIS_URL"], key_prefix=key_prefix) as bus:
        bus.publish(TradeEvent.create_trade_failed(symbol, "x"))
    out, err = _tradebus(["metrics"], env).communicate(timeout=60)
    samples = [s for f in text_string_to_metric_families(out) for s in f.samples]
    gauges = {s.name: s.value for s in samples if not s.labels}
    # per log route (the default routes: state, risk), never per symbol; no group has read anything yet
    by_route = {(s.name, s.labels["route"]): s.value for s in samples if s.labels}
    assert by_route == {
        (name, route): 0
        for route in ("risk", "state")
        for name in ("tradebus_logroute_lag", "tradebus_logroute_pending", "tradebus_logroute_oldest_waiting_seconds")
    }, out
    assert gauges == {
        "tradebus_redis_up": 1,
        "tradebus_pending_dispatch": 0,
        "tradebus_dead_letters": 2,
        "tradebus_kill_switches_engaged": 1,
        "tradebus_symbols": 1,
    }, err


def test_top_once_shows_rates_tasks_depths_and_switches(
    env: dict[str, str], redis_client: redis.Redis, key_prefix: str, symbol: str
) -> None:
    keys = Keys(key_prefix)
    engage_kill_switch(redis_client, keys, symbol, "drawdown")
    redis_client.hset(keys.stats(), mapping={"run:tradebus.state.apply": 7, "dead_lettered:tradebus.state.apply": 1})
    proc = _tradebus(["top", "--once", "--interval", "1"], env)
    # While top measures, events flow: it must count them by type
    with RedisEventBus(env["REDIS_URL"], key_prefix=key_prefix) as bus:
        bus.publish(TradeEvent.create_trade_failed(symbol, "first"))  # the symbol's first event starts its count
        while proc.poll() is None:
            bus.publish(TradeEvent.create_trade_failed(symbol, "x"))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rate = re.search(r"trade\.failed\W+([\d.]+)", out)
    assert rate and float(rate.group(1)) > 0, out
    assert re.search(r"tradebus\.state\.apply\W+7\W+0\W+1\W", out), out  # run, retried, dead-lettered
    assert re.search(rf"kill switches\W+{symbol} \(drawdown\)", out), out
    assert re.search(r"workers alive\W+\d", out), out
