"""`tradebus` commands through a subprocess (`python -m bus.cli`), against the real Redis, each test
under its own key prefix. The Celery broker is a private embedded Redis, so the task messages these
tests enqueue are never taken by another test's worker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
import redis

from bus.core.keys import Keys
from bus.dispatch.deadletters import dead_letter
from bus.events.model import TradeEvent
from tests.helpers import cli_env

pytestmark = pytest.mark.redis

SECRET = "s3cr3t-pw"


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    assert lines[0].startswith("tradebus: error: ")
    return lines[0]


def publish_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    p = run(["publish", "--json", *args], env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def broker_task_ids(broker_url: str, queue: str) -> list[str]:
    client = redis.Redis.from_url(broker_url)
    try:
        return [json.loads(m)["headers"]["id"] for m in client.lrange(queue, 0, -1)]
    finally:
        client.close()


# --- usage and errors ------------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    p = run(["--help"], cli_env())
    assert p.returncode == 0
    for name in ("publish", "tail", "state", "routes", "replay", "deadletters", "doctor", "demo"):
        assert name in p.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["publish", "order.teleported", "XAUUSD"], "unknown event type 'order.teleported'"),
        (["publish", "order.created", "XAU:USD"], "symbol 'XAU:USD' contains ':'"),
        (["publish", "order.created", "XAUUSD", "price=1"], "data.order_id"),
        (
            ["publish", "signal.generated", "XAUUSD", "--data", "{not json"],
            "--data is not valid JSON",
        ),
        (["publish", "signal.generated", "XAUUSD", "novalue"], "expected key=value"),
        (["publish"], "Missing argument"),
        (["tail", "--type", "nope"], "unknown event type 'nope'"),
        (["state", "XAUUSD", "--order", "1", "--position", "2"], "not both"),
        (["replay", "XAUUSD", "--from", "yesterday"], "is not a log id"),
        (["routes", "bogus"], "unknown event type 'bogus'"),
        (["deadletters", "purge"], "needs --yes"),
        (["state", "--no-such-option"], "No such option"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    # Redis is not even reachable here: arguments are checked before any connection
    p = run(args, cli_env(REDIS_URL="redis://127.0.0.1:1/0"))
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert needle in one_line_error(p)


@pytest.mark.parametrize(
    "command",
    [
        ["publish", "signal.generated", "XAUUSD", "signal_id=s1"],
        ["state"],
        ["tail", "--count", "1"],
        ["replay", "XAUUSD"],
        ["deadletters", "list"],
    ],
)
def test_unreachable_redis_is_one_line_exit_1_without_the_password(command: list[str]) -> None:
    p = run(command, cli_env(REDIS_URL=f"redis://:{SECRET}@127.0.0.1:1/0"))
    assert p.returncode == 1
    line = one_line_error(p)
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in line
    assert SECRET not in p.stdout + p.stderr


def test_redis_url_option_overrides_the_environment(redis_url: str, key_prefix: str) -> None:
    p = run(
        ["--redis-url", redis_url, "--prefix", key_prefix, "state", "--json"],
        cli_env(REDIS_URL="redis://127.0.0.1:1/0"),
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {}


def test_bad_setting_names_the_variable() -> None:
    p = run(["state"], cli_env(REDIS_URL="http://example.invalid/0"))
    assert p.returncode == 2
    assert "REDIS_URL" in one_line_error(p)


# --- publish / state -------------------------------------------------------------------------------


def test_publish_logs_broadcasts_and_dispatches(
    env: dict[str, str],
    symbol: str,
    private_broker: str,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    out = publish_json(
        env,
        "order.created",
        symbol,
        "order_id=o1",
        "order_type=BUY",
        "price=2000.5",
        "volume=0.1",
        "--data",
        '{"sl": 1995, "note": "cli"}',
    )
    assert out["event_type"] == "order.created" and out["log_id"]
    assert sorted(out["dispatched"]) == ["risk", "state"]
    # in the log, with data parsed from key=value (numbers as numbers) and --data merged
    [(log_id, fields)] = redis_client.xrange(Keys(key_prefix).log(symbol))
    assert log_id == out["log_id"]
    event = TradeEvent.from_json(fields["event"])
    assert event.data == {
        "order_id": "o1",
        "order_type": "BUY",
        "price": 2000.5,
        "volume": 0.1,
        "sl": 1995,
        "note": "cli",
    }
    # the routed task messages are on the broker, with the deterministic task ids
    assert f"{out['event_id']}:state" in broker_task_ids(private_broker, "tradebus.state")
    assert f"{out['event_id']}:risk" in broker_task_ids(private_broker, "tradebus.risk")


def test_state_shows_orders_positions_and_one_of_each(env: dict[str, str], symbol: str) -> None:
    publish_json(
        env,
        "order.created",
        symbol,
        "order_id=o1",
        "order_type=BUY",
        "price=10",
        "volume=2",
        "--apply-state",
    )
    publish_json(
        env,
        "position.opened",
        symbol,
        "position_id=p1",
        "entry_price=10",
        "volume=2",
        "direction=LONG",
        "--apply-state",
    )
    p = run(["state", symbol, "--json"], env)
    assert p.returncode == 0, p.stderr
    state = json.loads(p.stdout)[symbol]
    assert [o["order_id"] for o in state["orders"]] == ["o1"]
    assert [p["position_id"] for p in state["positions"]] == ["p1"]

    one = json.loads(run(["state", symbol, "--order", "o1", "--json"], env).stdout)
    assert one["order_id"] == "o1" and one["status"] == "pending"
    pos = json.loads(run(["state", symbol, "--position", "p1", "--json"], env).stdout)
    assert pos["position_id"] == "p1" and pos["status"] == "active"

    missing = run(["state", symbol, "--order", "nope"], env)
    assert missing.returncode == 1
    assert "no order 'nope'" in one_line_error(missing)

    human = run(["state"], env)
    assert human.returncode == 0 and "o1" in human.stdout and "p1" in human.stdout


# --- routes ----------------------------------------------------------------------------------------


def test_routes_for_an_event_type() -> None:
    p = run(["routes", "order.created", "--json"], cli_env())
    assert p.returncode == 0, p.stderr
    routes = json.loads(p.stdout)["routes"]
    assert [(r["name"], r["task"], r["queue"]) for r in routes] == [
        ("state", "tradebus.state.apply", "tradebus.state"),
        ("risk", "tradebus.risk.check", "tradebus.risk"),
    ]
    breach = json.loads(run(["routes", "RISK_LIMIT_BREACHED", "--json"], cli_env()).stdout)["routes"]
    assert [r["name"] for r in breach] == ["notify"]
    table = run(["routes"], cli_env())
    assert table.returncode == 0 and "tradebus.notify.send" in table.stdout


def test_routes_shows_the_workers_routes_file(tmp_path: Any) -> None:
    from bus.dispatch.routing import Route, RoutingTable

    table = RoutingTable.default()
    # no queue: where the Celery app's router puts the task (tradebus.notify.* -> tradebus.notify)
    table.add(Route("audit", "tradebus.notify.audit", event_types=("order.filled",), priority=7, expires=60))
    p = run(["routes", "order.filled", "--json"], cli_env(TRADEBUS_ROUTES_FILE=str(table.to_file(tmp_path / "r.json"))))
    assert p.returncode == 0, p.stderr
    audit = {r["name"]: r for r in json.loads(p.stdout)["routes"]}["audit"]
    assert (audit["queue"], audit["priority"], audit["expires"]) == ("tradebus.notify", 7, 60)


# --- tail ------------------------------------------------------------------------------------------


def start_tail(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bus.cli", "tail", "--json", "--timeout", "30", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # blocks until subscribed (or the command failed)
    if not line.startswith("listening"):
        out, err = proc.communicate(timeout=10)
        raise AssertionError(line + err)
    return proc


def finish(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_tail_live_filtered_by_symbol_and_type(env: dict[str, str], symbol: str) -> None:
    proc = start_tail(env, "--symbol", symbol, "--type", "signal.generated", "--count", "2")
    publish_json(env, "order.created", symbol, "order_id=o1", "order_type=BUY", "price=1", "volume=1")
    publish_json(env, "signal.generated", symbol + "X", "signal_id=other-symbol")
    a = publish_json(env, "signal.generated", symbol, "signal_id=s1")
    b = publish_json(env, "signal.generated", symbol, "signal_id=s2")
    got = finish(proc)
    assert [e["event_id"] for e in got] == [a["event_id"], b["event_id"]]
    assert [e["data"]["signal_id"] for e in got] == ["s1", "s2"]


def test_tail_from_log_replays_history_then_follows(env: dict[str, str], symbol: str) -> None:
    first = publish_json(env, "signal.generated", symbol, "signal_id=h1")
    second = publish_json(env, "signal.validated", symbol, "signal_id=h1")
    proc = start_tail(env, "--symbol", symbol, "--from-log", "--count", "3")
    live = publish_json(env, "signal.rejected", symbol, "signal_id=h2")
    got = finish(proc)
    assert [e["event_id"] for e in got] == [first["event_id"], second["event_id"], live["event_id"]]
    assert got[0]["log_id"] == first["log_id"]


def test_tail_count_not_reached_exits_1(env: dict[str, str], symbol: str) -> None:
    p = run(["tail", "--symbol", symbol, "--count", "1", "--timeout", "0.5"], env)
    assert p.returncode == 1
    assert "timed out" in p.stderr


# --- replay ----------------------------------------------------------------------------------------


def test_replay_redispatches_a_range_of_logged_events(env: dict[str, str], symbol: str, private_broker: str) -> None:
    ids = [
        publish_json(env, "order.created", symbol, f"order_id=r{i}", "order_type=BUY", "price=1", "volume=1")
        for i in range(4)
    ]
    client = redis.Redis.from_url(private_broker)
    client.delete("tradebus.state", "tradebus.risk")  # this test's broker: start from empty queues
    client.close()
    dry = run(
        [
            "replay",
            symbol,
            "--from",
            ids[1]["log_id"],
            "--to",
            ids[2]["log_id"],
            "--dry-run",
            "--json",
        ],
        env,
    )
    assert dry.returncode == 0, dry.stderr
    assert [e["event_id"] for e in json.loads(dry.stdout)["events"]] == [
        ids[1]["event_id"],
        ids[2]["event_id"],
    ]
    assert broker_task_ids(private_broker, "tradebus.state") == []

    p = run(["replay", symbol, "--from", ids[1]["log_id"], "--to", ids[2]["log_id"], "--json"], env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["count"] == 2
    queued = broker_task_ids(private_broker, "tradebus.state")
    assert sorted(queued) == sorted(f"{ids[i]['event_id']}:state" for i in (1, 2))


# --- dead letters ----------------------------------------------------------------------------------


def test_deadletters_list_replay_purge(
    env: dict[str, str], symbol: str, key_prefix: str, redis_url: str, private_broker: str
) -> None:
    keys = Keys(key_prefix)
    client = redis.Redis.from_url(redis_url)
    events = [TradeEvent(event_type="signal.generated", symbol=symbol, data={"signal_id": f"s{i}"}) for i in range(3)]
    for ev in events:
        dead_letter(
            client,
            keys,
            event_json=ev.to_json(),
            route="notify",
            task="tradebus.notify.send",
            attempts=6,
            reason="webhook answered 503",
            task_id=f"{ev.event_id}:notify",
        )
    client.close()
    listed = run(["deadletters", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)["dead_letters"]
    assert [d["reason"] for d in items] == ["webhook answered 503"] * 3
    human = run(["deadletters", "list"], env)
    assert "webhook answered 503" in human.stdout

    replayed = run(["deadletters", "replay", items[0]["id"], "--json"], env)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["replayed"] == 1
    assert f"{events[0].event_id}:notify" in broker_task_ids(private_broker, "tradebus.notify")

    purged = run(["deadletters", "purge", "--yes", "--json"], env)
    assert json.loads(purged.stdout)["purged"] == 2
    assert json.loads(run(["deadletters", "list", "--json"], env).stdout)["dead_letters"] == []


# --- doctor ----------------------------------------------------------------------------------------


def test_doctor_without_redis_explains_and_exits_1() -> None:
    p = run(["doctor", "--json"], cli_env(REDIS_URL=f"redis://:{SECRET}@127.0.0.1:1/0"))
    assert p.returncode == 1
    checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
    assert checks["redis"]["status"] == "fail" and "redis-server" in checks["redis"]["fix"]
    assert checks["broker"]["status"] == "fail"
    assert SECRET not in p.stdout + p.stderr
    human = run(["doctor"], cli_env(REDIS_URL="redis://127.0.0.1:1/0"))
    assert human.returncode == 1 and "FAIL" in human.stdout and "fix:" in human.stdout


def test_doctor_without_workers_says_how_to_start_one(env: dict[str, str]) -> None:
    p = run(["doctor", "--json", "--ping-timeout", "0.3"], env)
    assert p.returncode == 1, p.stdout
    checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
    assert checks["redis"]["status"] == "ok" and "version" in checks["redis"]["detail"]
    assert checks["broker"]["status"] == "ok"
    assert checks["persistence"]["status"] in ("ok", "warn")
    assert checks["workers"]["status"] == "fail"
    assert "celery -A celery_app worker" in checks["workers"]["fix"]


@pytest.mark.slow
@pytest.mark.celery
def test_doctor_all_good_with_a_worker(env: dict[str, str], private_broker: str, tmp_path: Any) -> None:
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed in finally
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_app",
            "worker",
            "-P",
            "solo",
            "-n",
            "doctor-test@%h",
            "-Q",
            "tradebus.state,tradebus.risk,tradebus.notify,tradebus.reconcile",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "WARNING",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 45
        while True:
            p = run(["doctor", "--json"], env)
            checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
            if checks["workers"]["status"] == "ok" or time.monotonic() > deadline or worker.poll() is not None:
                break
        assert checks["workers"]["status"] == "ok", (
            checks["workers"],
            (tmp_path / "worker.log").read_text(),
        )
        assert "doctor-test@" in checks["workers"]["detail"]
        assert p.returncode == 0, checks
        assert checks["queue tradebus.state"]["status"] == "ok"
    finally:
        worker.terminate()
        worker.wait(15)
        log.close()
