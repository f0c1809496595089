"""Routing rules: pure logic, no Redis, no Celery."""

from __future__ import annotations

import json
import sys

import pytest

from bus.dispatch.routing import DEFAULT_ROUTES, QUEUES, RetryPolicy, Route, RoutingTable
from bus.errors import RoutingError
from bus.events.model import TradeEvent, TradeEventType


def _names(table: RoutingTable, event_type: str, symbol: str = "XAUUSD") -> set[str]:
    return {r.name for r in table.routes_for((event_type, symbol))}


def test_import_routing_does_not_import_celery() -> None:
    import subprocess

    code = "import bus.dispatch.routing, bus.dispatch, sys; print('celery' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("t", list(TradeEventType))
def test_default_table(t: TradeEventType) -> None:
    table = RoutingTable.default()
    want = set()
    if t.is_order or t.is_position:
        want.add("state")
    if t.value in {"order.created", "order.modified", "order.filled", "order.partially_filled", "position.opened",
                   "position.modified", "position.partially_closed", "position.closed"}:  # fmt: skip
        want.add("risk")
    if t.value.startswith("risk.") or t.value in {"order.rejected", "trade.failed", "position.closed"}:
        want.add("notify")
    assert _names(table, t.value) == want


def test_default_queues_and_tasks() -> None:
    assert {(r.name, r.task, r.queue) for r in DEFAULT_ROUTES} == {
        ("state", "tradebus.state.apply", "tradebus.state"),
        ("risk", "tradebus.risk.check", "tradebus.risk"),
        ("notify", "tradebus.notify.send", "tradebus.notify"),
    }
    assert RoutingTable.default().queues == QUEUES


def test_symbol_patterns_and_user_routes_in_code() -> None:
    table = RoutingTable.default().add(Route("gold", "my.gold", "my.q", ("order.*",), symbols=("XAU*", "GC?")))
    assert "gold" in _names(table, "order.created", "XAUEUR")
    assert "gold" in _names(table, "order.created", "GCZ")
    assert "gold" not in _names(table, "order.created", "EURUSD")
    assert "gold" not in _names(table, "position.opened", "XAUUSD")
    assert "my.q" in table.queues
    ev = TradeEvent.create_order_created("XAUUSD", "1", "BUY", 1.0, 1.0)
    assert [r.name for r in table.routes_for(ev)] == ["state", "risk", "gold"]  # table order


def test_retry_policy_backoff_jitter_and_cap() -> None:
    p = RetryPolicy(max_retries=10, backoff=1.0, backoff_max=8.0, jitter=True)
    assert [p.countdown(n, 0.5) for n in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert p.countdown(1, 0.0) == 1.0 and p.countdown(1, 0.999) == pytest.approx(2.998)
    assert p.countdown(9, 0.999) == 8.0  # never above backoff_max
    assert RetryPolicy(jitter=False, backoff=2, backoff_max=100).countdown(3) == 16


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"name": "bad name"}, "name"),
        ({"task": ""}, "task"),
        ({"queue": "a b"}, "queue"),
        ({"event_types": ("orders.*",)}, "event_types"),
        ({"event_types": ()}, "event_types"),
        ({"priority": 10}, "priority"),
        ({"retry": RetryPolicy(max_retries=-1)}, "retry.max_retries"),
        ({"retry": RetryPolicy(backoff_max=1e6)}, "retry.backoff_max"),
        ({"retry": RetryPolicy(backoff=5, backoff_max=1)}, "retry.backoff_max"),
        ({"ignore_result": "no"}, "ignore_result"),
        ({"expires": 0}, "expires"),
        ({"expires": float("nan")}, "expires"),
        ({"countdown": True}, "countdown"),
        ({"countdown": 1801}, "countdown"),
        ({"countdown": 60, "expires": 30}, "expires"),  # it would expire before it could run
    ],
)
def test_bad_rule_names_rule_and_field(kw: dict, field: str) -> None:
    base = {"name": "r1", "task": "t", "queue": "q"}
    with pytest.raises(RoutingError, match=rf"route '.*': {field.replace('.', '[.]')} "):
        Route(**{**base, **kw})


def test_duplicate_and_remove() -> None:
    table = RoutingTable.default()
    with pytest.raises(RoutingError, match="'state': name is used"):
        table.add(Route("state", "x", "y"))
    table.remove("notify")
    assert "notify" not in _names(table, "risk.limit_breached")
    with pytest.raises(RoutingError, match="not in the table"):
        table.remove("nope")


def test_from_toml_and_json(tmp_path) -> None:
    toml = tmp_path / "routes.toml"
    toml.write_text(
        'disable = ["notify"]\n[[routes]]\nname = "audit"\ntask = "my.audit"\nqueue = "audit"\n'
        'event_types = "order.*"\nsymbols = ["XAU*"]\npriority = 3\n[routes.retry]\nmax_retries = 2\n'
    )
    t = RoutingTable.from_file(toml)
    audit = t.get("audit")
    assert audit == Route("audit", "my.audit", "audit", ("order.*",), ("XAU*",), 3, RetryPolicy(max_retries=2))
    assert t.get("notify") is None and t.get("state") is not None
    js = tmp_path / "routes.json"
    js.write_text(json.dumps({"include_defaults": False, "routes": [{"name": "a", "task": "t", "queue": "q"}]}))
    assert [r.name for r in RoutingTable.from_file(js)] == ["a"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"routes": [{"name": "a", "queue": "q"}]}', r"rule #1 \('a'\): missing field\(s\) \['task'\]"),
        ('{"routes": [{"name": "a", "task": "t", "queue": "q", "colour": 1}]}', r"unknown field\(s\) \['colour'\]"),
        ('{"routes": [{"name": "a", "task": "t", "queue": "q", "priority": 99}]}', r"rule #1: route 'a': priority"),
        ('{"routes": [{"name": "a", "task": "t", "queue": "q", "retry": {"tries": 1}}]}', "retry must be a table"),
        ('{"routes": 5}', "'routes' must be a list"),
        ("{not json", "not valid json"),
    ],
)
def test_bad_file_fails_with_clear_message(tmp_path, content: str, message: str) -> None:
    p = tmp_path / "r.json"
    p.write_text(content)
    with pytest.raises(RoutingError, match=message):
        RoutingTable.from_file(p)


def test_missing_file() -> None:
    with pytest.raises(RoutingError, match="cannot read"):
        RoutingTable.from_file("/nonexistent/routes.toml")


def test_routes_reach_workers_through_the_routes_file(settings, tmp_path, caplog) -> None:
    from bus.config import LoadEnvironmentVariables
    from bus.dispatch.dispatcher import Dispatcher

    table = RoutingTable.default().add(Route("audit", "myapp.audit", "audit", ("trade.*",), expires=60))
    Dispatcher.from_settings(settings, table)  # a table only this publisher knows
    assert "route(s) ['audit'] differ from the table workers read" in caplog.text
    caplog.clear()
    path = table.to_file(tmp_path / "routes.json")
    assert RoutingTable.from_file(path).routes == table.routes  # written whole, read back the same
    with_file = LoadEnvironmentVariables(None, redis_url=settings.bus_url, routes_file=str(path))
    assert Dispatcher.from_settings(with_file).routing.routes == table.routes
    Dispatcher.from_settings(with_file, table)
    assert "differ" not in caplog.text
