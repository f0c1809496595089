"""The README's Python snippets run as written against a real Redis (the blocking listen() ones are
run, verbatim from the reference, in test_bus_reference.py)."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import pytest
import redis

from bus.dispatch.routing import RoutingTable
from bus.executor.paper import PaperVenue

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BLOCKING = ("event_bus.listen()",)
# run against a Redis that is down, in tests/executor/test_executor_offline.py
OFFLINE = ("connect=False",)


def runnable_blocks() -> list[str]:
    # The Context Manager snippet elides its arguments as the reference does: fill them in.
    filled = [
        b.replace("create_order_created(...)", 'create_order_created("XAUUSD", "1", "BUY", 2000.5, 0.1)')
        for b in PYTHON
    ]
    return [b for b in filled if not any(marker in b for marker in BLOCKING + OFFLINE)]


def test_readme_has_the_reference_sections() -> None:
    for heading in (
        "Usage in Code",
        "Using Helper Methods",
        "Custom Events",
        "Subscribe to Specific Event Type",
        "Subscribe to All Events",
        "Non-blocking Subscription",
        "Querying State",
        "Integration with TradeExecutor",
        "Error Handling",
        "Context Manager",
    ):
        assert heading in README, heading
    assert len(runnable_blocks()) >= 9


def test_python_snippets_run_in_order(settings, tmp_path, monkeypatch, capsys) -> None:
    # Given a .env that points at the test Redis, under this test's prefix
    (tmp_path / ".env").write_text(
        f"REDIS_URL={settings.bus_url}\nCELERY_BROKER_URL={settings.broker_url}\n"
        f"TRADEBUS_KEY_PREFIX={settings.key_prefix}\nTRADEBUS_BROKER_KEY_PREFIX={settings.broker_key_prefix}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the executor's outbox
    # Names the reference's executor snippet assumes exist
    namespace: dict = {
        "redis": redis,
        "logger": logging.getLogger("readme"),
        "client": PaperVenue(),
        "executor_config": {"source": "readme"},
    }
    # When every snippet runs, in README order, in one namespace
    for block in runnable_blocks():
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    # Then they published to the test Redis and the executor traded
    bus = namespace["event_bus"]
    logged = {e.event_type.value for s in ("XAUUSD", "BTCUSD") for _, e in bus.read_log(s)}
    assert {"order.created", "position.opened", "position.closed", "trade.executed"} <= logged
    assert namespace["ticket"].status in ("filled", "partially_filled", "pending")
    out = capsys.readouterr().out
    assert "Cannot connect" not in out
    assert "filled 12345" in out  # the asyncio example received its own event
    for executor in ("trade_executor",):
        namespace[executor].close()
    assert "audit" in [r.name for r in namespace["routes"]]


def test_toml_routes_example_loads() -> None:
    (toml,) = [code for lang, code in BLOCKS if lang == "toml"]
    table = RoutingTable.from_config(tomllib.loads(toml))
    audit = [r for r in table if r.name == "audit"][0]
    assert audit.retry.max_retries == 8 and "state" in [r.name for r in table]


def test_env_block_is_the_reference_one() -> None:
    (env,) = [code for lang, code in BLOCKS if lang == "env"]
    assert "REDIS_HOST=localhost" in env and "REDIS_PASSWORD=" in env
    with pytest.raises(StopIteration):
        next(b for b in runnable_blocks() if "app.infrastructure" in b)
