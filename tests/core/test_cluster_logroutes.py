"""Log routes on a 3-master Redis Cluster the test starts: each drain's transaction (effects + XACK, dead
letters, risk's day totals) goes to the master of the symbol's slot, and the readers (dead letters, the
day's realised pnl across symbols) find what the drains wrote on every master."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis
from redis.cluster import RedisCluster

from bus import RedisEventBus, TradeEvent
from bus.config import Settings
from bus.core.state import get_order
from bus.dispatch.deadletters import count_dead_letters, list_dead_letters, purge
from bus.dispatch.dispatcher import Dispatcher
from bus.dispatch.logroutes.config import LogRouteConfig
from bus.dispatch.logroutes.drain import DONE, RETRY, Drainer
from bus.dispatch.logroutes.effects import effect_for
from bus.dispatch.logroutes.monitor import caught_up, route_lag
from bus.dispatch.routing import LOG, RetryPolicy, Route, RoutingTable
from bus.domain.risk import RiskLimits, daily_realised_pnl
from bus.domain.risklog import check_batch
from bus.events.types import TradeEventType
from tests.helpers import cli_env
from tests.logroute_effects import applied
from tests.topology_servers import ClusterSet

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SYMBOLS = ("XAUUSD", "EURUSD", "BTCUSD", "US500", "GBPJPY")
FAST = LogRouteConfig(batch=7, claim_after=2.0, time_budget=10.0)
RECORD = Route("rec", "tradebus_test.log_record_slot", "tradebus.state", ("order.*",), mode=LOG,
               retry=RetryPolicy(max_retries=1, backoff=0.0, backoff_max=0.0))  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterSet]:
    topology = ClusterSet().start()
    yield topology
    topology.close()


@pytest.fixture
def bus(cluster: ClusterSet, key_prefix: str, broker_url: str) -> Iterator[RedisEventBus]:
    """A bus on the Cluster whose default routes (state, risk: log routes) and ``rec`` wake drains through a
    separate broker (a database of the shared Redis)."""
    s = Settings(redis_url=cluster.url, celery_broker_url=broker_url, key_prefix=key_prefix,
                 broker_key_prefix=f"{key_prefix}:")  # fmt: skip
    table = RoutingTable([*RoutingTable.default(), RECORD])
    with RedisEventBus(settings=s, dispatcher=Dispatcher.from_settings(s, table, log_routes=FAST)) as b:
        yield b


def drain(bus: RedisEventBus, route: Route, symbol: str, **kw: object) -> Drainer:
    return Drainer(bus.client, bus.keys, route, symbol, kw.pop("effect", None) or effect_for(route),  # type: ignore[arg-type]
                   config=FAST, publisher=bus.publisher, **kw)  # type: ignore[arg-type]  # fmt: skip


def order(i: int, symbol: str, **data: object) -> TradeEvent:
    return TradeEvent.create_order_created(symbol, f"{symbol}-{i}", "BUY", 100.0 + i, 1.0, **data)


def test_drains_on_every_master_apply_in_order_once_and_dead_letter_in_the_symbols_slot(bus, broker_url) -> None:
    client: RedisCluster = bus.client  # type: ignore[assignment]
    masters = {client.get_node_from_key(bus.keys.log(s)).name for s in SYMBOLS}
    assert len(masters) == 3  # the symbols' logs are spread over the three masters
    per_symbol = {s: [order(i, s, poison=(s == "BTCUSD" and i == 4)) for i in range(20)] for s in SYMBOLS}
    stream = [per_symbol[s][i] for i in range(20) for s in SYMBOLS]
    receipts = bus.publish_many(stream[:50]) + [bus.publish(e) for e in stream[50:]]
    assert all("rec" in r.dispatched and "state" in r.dispatched for r in receipts)
    # each (route, symbol) was woken under the bus's own prefix: its flag is set and its wake-up on the broker
    assert all(client.exists(bus.keys.wake_flag(route, s)) for route in ("rec", "state", "risk") for s in SYMBOLS)
    broker = redis.Redis.from_url(broker_url)
    queued = sum(broker.llen(key) for key in broker.scan_iter(f"{bus.keys.prefix}:*", _type="list"))
    broker.close()
    assert queued == 3 * len(SYMBOLS)  # one per (route, symbol): later publishes found the flag set

    rec, state = RoutingTable([RECORD]).get("rec"), RoutingTable.default().get("state")
    for s in SYMBOLS:
        out = drain(bus, state, s).run()
        assert (out.status, out.acked) == (DONE, 20)
        out = drain(bus, rec, s).run()
        while out.status == RETRY:  # the poison entry: retried once, then dead-lettered with its ack
            out = drain(bus, rec, s).run(out.token)
        assert out.status == DONE
    for s in SYMBOLS:
        expected = [e.event_id for e in per_symbol[s] if not e.data["poison"]]
        assert applied(client, bus.keys, "rec", s) == expected  # each once, in log order
        assert get_order(client, bus.keys, s, f"{s}-19") is not None
    # the dead letter is in BTCUSD's slot, and the readers find it next to the global stream's
    (dl,) = list_dead_letters(client, bus.keys)
    assert dl.id.startswith("BTCUSD/") and dl.route == "rec" and dl.event is not None
    assert dl.event.event_id == per_symbol["BTCUSD"][4].event_id and dl.log_id
    assert client.xlen(bus.keys.symbol_dead_letters("BTCUSD")) == 1
    assert count_dead_letters(client, bus.keys) == 1
    env = cli_env(REDIS_URL=bus.settings.bus_url, CELERY_BROKER_URL=broker_url, TRADEBUS_KEY_PREFIX=bus.keys.prefix)
    listed = subprocess.run([sys.executable, "-m", "bus.cli", "deadletters", "list", "--json"], capture_output=True,
                            text=True, timeout=60, env=env)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert [d["id"] for d in json.loads(listed.stdout)["dead_letters"]] == [dl.id]  # `tradebus deadletters` finds it
    # the two drained routes have applied every entry they take (risk, also woken, was never drained here)
    routing = bus.dispatcher.routing  # type: ignore[union-attr]
    drained = [g for g in route_lag(client, bus.keys, routing) if g.route in ("state", "rec")]
    assert len(drained) == 2 * len(SYMBOLS) and caught_up(drained)
    assert purge(client, bus.keys, [dl.id]) == 1 and count_dead_letters(client, bus.keys) == 0


def closed(symbol: str, position: str, pnl: float) -> TradeEvent:
    return TradeEvent.create_position_closed(symbol, position, 100.0, pnl, timestamp="2024-05-01T10:00:00+00:00")


def test_risk_day_total_spans_symbols_on_different_masters_and_breaches_once(bus) -> None:
    client = bus.client
    risk = RoutingTable.default().get("risk")
    limits = RiskLimits(max_daily_loss=Decimal("100"))

    def effect(batch) -> None:  # noqa: ANN001
        check_batch(batch, limits)

    # a loss on XAUUSD, then on EURUSD (another master): the day's net crosses the limit on the second
    bus.publish(closed("XAUUSD", "p1", -60.5))
    assert drain(bus, risk, "XAUUSD", effect=effect).run().status == DONE
    bus.publish(closed("EURUSD", "p2", -39.5))
    bus.publish(closed("EURUSD", "p3", -0.25))
    assert drain(bus, risk, "EURUSD", effect=effect).run().status == DONE
    assert daily_realised_pnl(client, bus.keys, "2024-05-01") == Decimal("-100.25")
    breaches = [e for _, e in bus.read_log("EURUSD") if e.event_type is TradeEventType.RISK_LIMIT_BREACHED]
    assert [b.data["rule"] for b in breaches] == ["max_daily_loss"]  # once: p3 crossed it, p2 did not
    assert not [e for _, e in bus.read_log("XAUUSD") if e.event_type is TradeEventType.RISK_LIMIT_BREACHED]
    # each symbol's total lives in its own slot
    assert client.hget(bus.keys.symbol_daily_loss("XAUUSD", "2024-05-01"), "total") == b"-6050000000"
