"""`tradebus doctor`: is everything the bridge needs there? Each check says what is missing and how
to fix it; the exit code is 1 when any check fails (warnings alone exit 0 unless --strict)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import redis
import typer
from rich.table import Table

from bus.cli.common import EXIT_OK, EXIT_PROBLEM, CliContext, JsonOption, connect, console, print_json, unreachable
from bus.config import Settings, safe_url
from bus.core.keyspace import broker_families, bus_families, memory_by_family
from bus.dispatch.messages import broker_sentinel_option

#: seconds a worker has to answer `celery inspect ping`
PING_TIMEOUT = 1.0
#: queued tasks above which a queue is reported as backed up
QUEUE_BACKLOG_WARN = 1000
AOF_FIX = "enable AOF: `redis-server --appendonly yes` (CONFIG SET appendonly yes)"


@dataclass
class Check:
    name: str
    status: Literal["ok", "warn", "fail"]
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
    as_json: JsonOption = False,
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
    client = connect(settings, check=False)
    try:
        checks = _redis_checks(client, settings)
    finally:
        client.close()
    broker = _broker_check(settings)
    checks.append(broker)
    if broker.status == "ok":
        checks.extend(_worker_and_queue_checks(settings, ping_timeout))
    else:
        checks.append(Check("workers", "fail", "not checked: the broker is unreachable", "fix the broker first"))
    return checks


# --- Redis ----------------------------------------------------------------------------------------


def _redis_checks(client: redis.Redis, settings: Settings) -> list[Check]:
    url = safe_url(settings.bus_url)
    try:
        info = client.info()
    except redis.AuthenticationError as e:
        fix = "set REDIS_PASSWORD / REDIS_USERNAME, or the password in REDIS_URL"
        return [Check("redis", "fail", f"{url} refused the credentials ({e})", fix)]
    except (redis.RedisError, OSError) as e:
        fix = (
            "start Redis (`redis-server`, or `docker compose up -d redis`), or point "
            "REDIS_URL at yours; `tradebus demo` runs an embedded one"
        )
        return [Check("redis", "fail", unreachable(settings.bus_url, e, hint=False), fix)]
    return [
        _version_check(info, url),
        _persistence_check(info, client),
        _topology_check(client, settings),
        *_bus_data_checks(client, settings),
        *_log_route_checks(client, settings),
    ]


def _version_check(info: dict[str, Any], url: str) -> Check:
    version = str(info.get("redis_version", "?"))
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major and major < 6:
        return Check(
            "redis", "fail", f"{url} answers, version {version}", "tradebus needs Redis >= 6.2 (streams, XAUTOCLAIM)"
        )
    return Check("redis", "ok", f"{url} answers, version {version}")


def _persistence_check(info: dict[str, Any], client: redis.Redis) -> Check:
    aof = str(info.get("aof_enabled", 0)) == "1"
    rdb = _rdb_enabled(client)
    if aof:
        return Check("persistence", "ok", "AOF on" + (", RDB snapshots on" if rdb else ""))
    if rdb:
        return Check(
            "persistence", "warn", "RDB snapshots only: a crash loses the writes since the last snapshot", AOF_FIX
        )
    return Check("persistence", "warn", "off: a Redis restart loses the event log and state", AOF_FIX)


def _rdb_enabled(client: redis.Redis) -> bool:
    try:
        save = client.config_get("save").get("save", "")
    except redis.RedisError:  # CONFIG may be disabled (managed Redis): assume the provider snapshots
        return True
    return bool(str(save).strip())


def _topology_check(client: redis.Redis, settings: Settings) -> Check:
    from bus.core.deployment import deployment
    from bus.core.keys import Keys

    try:
        found = deployment(client, Keys(settings.key_prefix))
    except redis.RedisError as e:
        return Check("topology", "warn", f"could not read the replication state: {e}")
    need = settings.publish_replicas
    short = [m.address for m in found.masters if m.online_replicas < need]
    if short:
        fix = f"add replicas, or lower TRADEBUS_PUBLISH_REPLICAS={need}: publishes there raise NotReplicatedError"
        return Check("topology", "fail", found.describe(), fix)
    if found.kind == "sentinel" and not found.masters[0].replicas:
        return Check("topology", "warn", found.describe(), "Sentinel has no replica to promote: add one")
    return Check("topology", "ok", found.describe())


def _bus_data_checks(client: redis.Redis, settings: Settings) -> list[Check]:
    from bus.core.keys import Keys
    from bus.dispatch.deadletters import count_dead_letters

    keys = Keys(settings.key_prefix)
    try:
        dead = count_dead_letters(client, keys)
        symbols = [_text(s) for s in client.smembers(keys.symbols())]
        pending = sum(int(client.zcard(keys.pending_dispatch_for(s))) for s in symbols)
    except redis.RedisError as e:
        return [Check("dead letters", "warn", f"could not read: {e}")]
    checks = []
    if dead:
        fix = "see `tradebus deadletters list`, then `tradebus deadletters replay` or purge"
        checks.append(Check("dead letters", "warn", f"{dead} task(s) failed past their retries", fix))
    else:
        checks.append(Check("dead letters", "ok", "none"))
    if pending:
        detail = f"{pending} logged event(s) whose tasks are not recorded as enqueued"
        fix = "they are re-dispatched by celery beat: run `celery -A celery_app beat`"
        checks.append(Check("dispatch backlog", "warn", detail, fix))
    checks.append(_memory_check(client, settings, keys.prefix))
    return checks


def _log_route_checks(client: redis.Redis, settings: Settings) -> list[Check]:
    from bus.core.keys import Keys
    from bus.dispatch.logroutes.config import LogRouteConfig
    from bus.dispatch.logroutes.monitor import health, route_lag
    from bus.dispatch.routing import RoutingTable

    table = RoutingTable.from_file(settings.routes_file) if settings.routes_file else RoutingTable.default()
    claim_after = LogRouteConfig.from_settings(settings.log_routes).claim_after
    found = health(route_lag(client, Keys(settings.key_prefix), table), stuck_after_ms=int(2 * claim_after * 1000),
                   log_maxlen=settings.log_maxlen)  # fmt: skip
    return [] if found is None else [Check("log routes", *found)]


def _memory_check(client: redis.Redis, settings: Settings, prefix: str) -> Check:
    """Memory by key family (sampled, bounded: bus.core.keyspace), the broker's keys included when it is Redis."""
    from bus.dispatch.messages import PRIORITY_STEPS, broker_key_prefix_option, redis_client_kwargs, redis_queue_key
    from bus.dispatch.routing import RoutingTable

    try:
        lines = memory_by_family(client, bus_families(prefix)).lines()
        broker_kw = redis_client_kwargs(settings.broker_url)
        if broker_kw is not None:
            gp = broker_key_prefix_option(settings.broker_url, settings).get("global_keyprefix", "")
            queue_keys = [redis_queue_key(q, p, gp) for q in RoutingTable.default().queues for p in PRIORITY_STEPS]
            broker = redis.Redis(**broker_kw, **settings.ssl_options(settings.broker_url), socket_timeout=5)
            try:
                lines += memory_by_family(broker, broker_families(gp, queue_keys)).lines()
            finally:
                broker.close()
    except (redis.RedisError, OSError) as e:
        return Check("memory", "warn", f"could not measure: {e}")
    return Check("memory", "ok", "\n".join(lines) or "no tradebus keys")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- the Celery broker and workers ----------------------------------------------------------------


def _broker_check(settings: Settings) -> Check:
    url = settings.broker_url
    try:
        from kombu import Connection

        options = {"max_retries": 0, **broker_sentinel_option(settings)}
        with Connection(url, connect_timeout=2, transport_options=options) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
            if url.startswith(("redis", "rediss", "unix")):
                conn.default_channel.client.ping()
    except Exception as e:  # noqa: BLE001 - any failure here means "broker unreachable"
        return Check(
            "broker",
            "fail",
            f"cannot reach the Celery broker at {safe_url(url)} "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})",
            "start it, or set CELERY_BROKER_URL (default: the bus Redis, next database)",
        )
    return Check("broker", "ok", f"{safe_url(url)} answers")


def _worker_and_queue_checks(settings: Settings, timeout: float) -> list[Check]:
    """The routing the workers read (TRADEBUS_ROUTES_FILE, the router for routes without a queue): each
    routed queue's backlog and live consumers (``inspect active_queues``), and routes that would not run."""
    from celery_app import make_celery
    from celery_app.startup import routed_queues

    app = make_celery(settings, set_as_current=False)
    queues = routed_queues(app, app.tradebus.routing)
    depths = _queue_depths(settings.broker_url, list(queues), broker_sentinel_option(settings))
    try:
        workers, consumers = _ask_workers(app, timeout)
    except Exception as e:  # noqa: BLE001 - whatever stops the question, the workers are not known to run
        return [Check("workers", "fail", f"could not ask the workers: {e}", "check CELERY_BROKER_URL")]
    checks = [_workers_check(workers, timeout)]
    for q, routes in queues.items():
        checks.append(_queue_check(q, routes, depths.get(q), consumers.get(q, []), bool(workers)))
    checks.append(_routes_check(app))
    return checks


def _ask_workers(app: Any, timeout: float) -> tuple[list[str], dict[str, list[str]]]:
    """The workers that answer a ping, and the workers consuming each queue."""
    replies = app.control.ping(timeout=timeout) or []
    consumers: dict[str, list[str]] = {}
    if replies:
        active = app.control.inspect(timeout=timeout).active_queues() or {}
        for worker, qs in active.items():
            for q in qs:
                consumers.setdefault(q["name"], []).append(worker)
    return sorted(name for r in replies for name in r), consumers


START_WORKER = "start one: `celery -A celery_app worker -E` (without -Q it consumes every routed queue)"


def _workers_check(workers: list[str], timeout: float) -> Check:
    if not workers:
        return Check(
            "workers",
            "fail",
            f"no Celery worker answered a ping within {timeout}s: events are logged but their tasks do not run",
            START_WORKER,
        )
    return Check("workers", "ok", f"{len(workers)} worker(s) alive: {', '.join(workers)}")


def _queue_check(queue: str, routes: list[str], depth: int | None, consumers: list[str], any_worker: bool) -> Check:
    waiting = f"{depth} task(s) waiting" if depth is not None else "depth unknown"
    of_routes = f" (route {', '.join(routes)})" if routes else ""
    if not consumers and any_worker:
        fix = "restart a worker without -Q (it consumes every routed queue), or add the queue to its -Q"
        return Check(f"queue {queue}", "fail", f"no live worker consumes it{of_routes}; {waiting}", fix)
    if depth and (depth > QUEUE_BACKLOG_WARN or not any_worker):
        return Check(f"queue {queue}", "warn", waiting + of_routes, "more workers, or find out why tasks are slow")
    by = f", consumed by {', '.join(sorted(consumers))}" if consumers else ""
    return Check(f"queue {queue}", "ok", waiting + by)


def _routes_check(app: Any) -> Check:
    """Routed tasks the workers would not run as their routes say (the warnings a worker logs at start)."""
    from celery_app.startup import route_problems

    try:
        app.loader.import_default_modules()  # TRADEBUS_TASK_MODULES, as a worker imports them
    except Exception as e:  # noqa: BLE001 - a worker would fail the same way at start
        return Check("routes", "fail", f"cannot import the task modules: {type(e).__name__}: {e}",
                     "fix TRADEBUS_TASK_MODULES (importable module names, comma-separated)")  # fmt: skip
    problems = route_problems(app, app.tradebus.routing)
    if problems:
        return Check("routes", "warn", "; ".join(problems), "see each route's fix")
    return Check("routes", "ok", f"{len(app.tradebus.routing)} route(s), each task a routed task")


def _queue_depths(broker_url: str, queues: list[str], options: dict[str, str]) -> dict[str, int]:
    from kombu import Connection

    depths: dict[str, int] = {}
    try:
        with Connection(broker_url, connect_timeout=2, transport_options=options) as conn:
            channel = conn.default_channel
            for q in queues:
                try:
                    _, count, _ = channel.queue_declare(q, passive=True)
                    depths[q] = int(count)
                except Exception:  # noqa: BLE001 - queue never declared: nothing waiting
                    depths[q] = 0
                    # AMQP closes the channel after a failed passive declare; Redis has no such channel state
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
