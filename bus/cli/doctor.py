"""`tradebus doctor`: is everything the bridge needs there? Each check says what is missing and how
to fix it; the exit code is 1 when any check fails (warnings alone exit 0 unless --strict)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, cast

import redis
import typer
from rich.table import Table

from bus.cli.common import EXIT_OK, EXIT_PROBLEM, CliContext, connect, console, print_json, unreachable
from bus.config import Settings, safe_url
from bus.core.keyspace import broker_families, bus_families, memory_by_family

#: seconds a worker has to answer `celery inspect ping`
PING_TIMEOUT = 1.0
#: queued tasks above which a queue is reported as backed up
QUEUE_BACKLOG_WARN = 1000
FALLBACK_QUEUES = ("tradebus.state", "tradebus.risk", "tradebus.notify", "tradebus.reconcile")
WORKER_CMD = "celery -A celery_app worker -Q " + ",".join(FALLBACK_QUEUES)


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def doctor(
    ctx: typer.Context,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings count as failures.")] = False,
    ping_timeout: Annotated[
        float, typer.Option("--ping-timeout", min=0.1, help="Worker ping wait (s).")
    ] = PING_TIMEOUT,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON).")] = False,
) -> None:
    """Check Redis, persistence, the broker, workers, queues and dead letters."""
    obj: CliContext = ctx.obj
    checks = run_checks(obj.settings, ping_timeout=ping_timeout)
    bad = [c for c in checks if c.status == "fail" or (strict and c.status == "warn")]
    code = EXIT_PROBLEM if bad else EXIT_OK
    if as_json:
        print_json({"ok": not bad, "checks": [asdict(c) for c in checks]})
    else:
        _render(checks, obj.settings)
    raise typer.Exit(code)


def run_checks(settings: Settings, *, ping_timeout: float = PING_TIMEOUT) -> list[Check]:
    checks: list[Check] = []
    client = connect(settings, decode=True, check=False)
    try:
        info = _redis_checks(client, settings, checks)
        if info is not None:
            _bus_data_checks(client, settings, checks)
    finally:
        client.close()
    broker_ok = _broker_check(settings, checks)
    if broker_ok:
        _worker_and_queue_checks(settings, checks, ping_timeout)
    else:
        checks.append(Check("workers", "fail", "not checked: the broker is unreachable", "fix the broker first"))
    return checks


def _redis_checks(client: redis.Redis, settings: Settings, checks: list[Check]) -> dict[str, Any] | None:
    url = safe_url(settings.bus_url)
    try:
        info = client.info()
    except redis.AuthenticationError as e:
        checks.append(
            Check(
                "redis",
                "fail",
                f"{url} refused the credentials ({e})",
                "set REDIS_PASSWORD / REDIS_USERNAME, or the password in REDIS_URL",
            )
        )
        return None
    except (redis.RedisError, OSError) as e:
        checks.append(
            Check(
                "redis",
                "fail",
                unreachable(settings.bus_url, e, hint=False),
                "start Redis (`redis-server`, or `docker compose up -d redis`), or point "
                "REDIS_URL at yours; `tradebus demo` runs an embedded one",
            )
        )
        return None
    version = str(info.get("redis_version", "?"))
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major and major < 6:
        checks.append(
            Check(
                "redis",
                "fail",
                f"{url} answers, version {version}",
                "tradebus needs Redis >= 6.2 (streams, XAUTOCLAIM)",
            )
        )
    else:
        checks.append(Check("redis", "ok", f"{url} answers, version {version}"))
    aof = str(info.get("aof_enabled", 0)) == "1"
    rdb = _rdb_enabled(client)
    if aof:
        checks.append(Check("persistence", "ok", "AOF on" + (", RDB snapshots on" if rdb else "")))
    elif rdb:
        checks.append(
            Check(
                "persistence",
                "warn",
                "RDB snapshots only: a crash loses the writes since the last snapshot",
                "enable AOF: `redis-server --appendonly yes` (CONFIG SET appendonly yes)",
            )
        )
    else:
        checks.append(
            Check(
                "persistence",
                "warn",
                "off: a Redis restart loses the event log and state",
                "enable AOF: `redis-server --appendonly yes` (CONFIG SET appendonly yes)",
            )
        )
    return info


def _rdb_enabled(client: redis.Redis) -> bool:
    try:
        save = client.config_get("save").get("save", "")
    except redis.RedisError:  # CONFIG may be disabled (managed Redis): assume the provider snapshots
        return True
    return bool(str(save).strip())


def _bus_data_checks(client: redis.Redis, settings: Settings, checks: list[Check]) -> None:
    from bus.core.keys import Keys

    keys = Keys(settings.key_prefix)
    try:
        dead = int(client.xlen(keys.dead_letters()))
        symbols = cast("set[str]", client.smembers(keys.symbols()))  # connect(decode=True): str members
        pending = sum(int(client.zcard(keys.pending_dispatch_for(s))) for s in symbols)
    except redis.RedisError as e:
        checks.append(Check("dead letters", "warn", f"could not read: {e}"))
        return
    if dead:
        checks.append(
            Check(
                "dead letters",
                "warn",
                f"{dead} task(s) failed past their retries",
                "see `tradebus deadletters list`, then `tradebus deadletters replay` or purge",
            )
        )
    else:
        checks.append(Check("dead letters", "ok", "none"))
    if pending:
        checks.append(
            Check(
                "dispatch backlog",
                "warn",
                f"{pending} logged event(s) whose tasks are not recorded as enqueued",
                "they are re-dispatched by celery beat: run `celery -A celery_app beat`",
            )
        )
    checks.append(_memory_check(client, settings, keys.prefix))


def _memory_check(client: redis.Redis, settings: Settings, prefix: str) -> Check:
    """Memory by key family (sampled, bounded: bus.core.keyspace), the broker's keys included when it is Redis."""
    from bus.dispatch.messages import PRIORITY_STEPS, broker_key_prefix_option, redis_client_kwargs, redis_queue_key

    try:
        lines = memory_by_family(client, bus_families(prefix)).lines()
        broker_kw = redis_client_kwargs(settings.broker_url)
        if broker_kw is not None:
            gp = broker_key_prefix_option(settings.broker_url, settings).get("global_keyprefix", "")
            queue_keys = [redis_queue_key(q, p, gp) for q in _queues() for p in PRIORITY_STEPS]
            broker = redis.Redis(**broker_kw, **settings.ssl_options(settings.broker_url), socket_timeout=5)
            try:
                lines += memory_by_family(broker, broker_families(gp, queue_keys)).lines()
            finally:
                broker.close()
    except (redis.RedisError, OSError) as e:
        return Check("memory", "warn", f"could not measure: {e}")
    return Check("memory", "ok", "\n".join(lines) or "no tradebus keys")


def _broker_check(settings: Settings, checks: list[Check]) -> bool:
    url = settings.broker_url
    try:
        from kombu import Connection

        with Connection(url, connect_timeout=2, transport_options={"max_retries": 0}) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
            if url.startswith(("redis", "rediss", "unix")):
                conn.default_channel.client.ping()
    except Exception as e:  # noqa: BLE001 - any failure here means "broker unreachable"
        checks.append(
            Check(
                "broker",
                "fail",
                f"cannot reach the Celery broker at {safe_url(url)} "
                f"({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                "start it, or set CELERY_BROKER_URL (default: the bus Redis, next database)",
            )
        )
        return False
    checks.append(Check("broker", "ok", f"{safe_url(url)} answers"))
    return True


def _queues() -> list[str]:
    try:
        from bus.dispatch.routing import RoutingTable

        table = RoutingTable.default()
        return list(table.queues)
    except Exception:  # noqa: BLE001 - fall back to the documented queues
        return list(FALLBACK_QUEUES)


def _worker_and_queue_checks(settings: Settings, checks: list[Check], timeout: float) -> None:
    queues = _queues()
    depths = _queue_depths(settings.broker_url, queues)
    try:
        from celery_app import make_celery

        app = make_celery(settings)
        replies = app.control.ping(timeout=timeout) or []
        consumed: set[str] = set()
        if replies:
            active = app.control.inspect(timeout=timeout).active_queues() or {}
            consumed = {q["name"] for qs in active.values() for q in qs}
    except Exception as e:  # noqa: BLE001
        checks.append(Check("workers", "fail", f"could not ask the workers: {e}", "check CELERY_BROKER_URL"))
        return
    workers = sorted(name for r in replies for name in r)
    if not workers:
        checks.append(
            Check(
                "workers",
                "fail",
                f"no Celery worker answered a ping within {timeout}s: events are logged but their tasks do not run",
                f"start one: `{WORKER_CMD}`",
            )
        )
    else:
        missing = [q for q in queues if q not in consumed]
        if missing:
            checks.append(
                Check(
                    "workers",
                    "fail",
                    f"{len(workers)} worker(s) alive ({', '.join(workers)}) "
                    f"but no worker consumes {', '.join(missing)}",
                    f"start one: `{WORKER_CMD}`",
                )
            )
        else:
            checks.append(Check("workers", "ok", f"{len(workers)} worker(s) alive: {', '.join(workers)}"))
    for q in queues:
        depth = depths.get(q)
        if depth is None:
            continue
        status = "warn" if depth > QUEUE_BACKLOG_WARN or (depth and not workers) else "ok"
        fix = "more workers, or find out why tasks are slow" if status == "warn" else ""
        checks.append(Check(f"queue {q}", status, f"{depth} task(s) waiting", fix))


def _queue_depths(broker_url: str, queues: list[str]) -> dict[str, int]:
    from kombu import Connection

    depths: dict[str, int] = {}
    try:
        with Connection(broker_url, connect_timeout=2) as conn:
            channel = conn.default_channel
            for q in queues:
                try:
                    _, count, _ = channel.queue_declare(q, passive=True)
                    depths[q] = int(count)
                except Exception:  # noqa: BLE001 - queue never declared: nothing waiting
                    depths[q] = 0
                    if not broker_url.startswith(("redis", "rediss", "unix")):
                        channel = conn.channel()
    except Exception:  # noqa: BLE001 - reported by the broker check already
        return {}
    return depths


def _render(checks: list[Check], settings: Settings) -> None:
    mark = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}
    table = Table(title=f"tradebus doctor (key prefix {settings.key_prefix})", title_justify="left")
    table.add_column("check")
    table.add_column("")
    table.add_column("detail / how to fix", overflow="fold")
    for c in checks:
        detail = c.detail + (f"\n[dim]fix:[/] {c.fix}" if c.fix and c.status != "ok" else "")
        table.add_row(c.name, mark[c.status], detail)
    console.print(table)
    failed = [c.name for c in checks if c.status == "fail"]
    if failed:
        console.print(f"[bold red]{len(failed)} problem(s):[/] {', '.join(failed)}")
    else:
        console.print("[green]all good[/]")
