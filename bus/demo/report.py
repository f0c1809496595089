"""The end of `tradebus demo`: gather what happened (from the bus's logs, the worker's counters, the
task events and the paper account) into one summary, and show it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bus.demo.environment import DemoEnvironment
from bus.demo.session import Session
from bus.dispatch.deadletters import count_dead_letters
from bus.executor.paper import PaperVenue
from bus.monitor.snapshot import snapshot


def percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    s = sorted(values)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 3)

    return {"n": len(s), "p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(s[-1] * 1000, 3)}


def collect(session: Session, env: DemoEnvironment, *, runtime: float, drained: bool) -> dict[str, Any]:
    """The summary of a finished session: what the logs, the worker's counters, the task events and the
    paper account say happened, and the problems found (``ok`` when there are none)."""
    logged = _read_logs(session)
    positions, matches = _positions(session, logged.realized)
    summary = {
        "runtime_seconds": round(runtime, 2),
        "redis": env.redis_desc,
        "key_prefix": env.prefix,
        "worker": {
            "name": env.worker_name.replace("%h", "<host>"),
            "pool": env.pool,
            "concurrency": env.concurrency,
        },
        "symbols": session.symbols,
        "events_total": sum(logged.events.values()),
        "events_by_type": dict(sorted(logged.events.items())),
        "tasks": _tasks(session, drained),
        "bus": _bus_figures(session),
        "routes": _route_figures(session, env),
        "risk_breaches": logged.breaches,
        "kill_switch_refusals": session.strategy.refusals,
        "positions": positions,
        "pnl": {
            "realized": round(sum(logged.realized.values()), 2),
            "unrealized": round(sum(p["unrealized_pnl"] for p in positions.values()), 2),
            "equity": str(session.venue.equity().quantize(Decimal("0.01"))),
        },
        "state_projection_matches_broker": matches,
        "latency": {
            "publish": percentiles(session.timed.publish_seconds),
            "publish_to_task_start": percentiles(session.monitor.started_latency),
        },
    }
    summary["problems"] = problems(summary)
    summary["ok"] = not summary["problems"]
    if not summary["ok"]:
        summary["worker_log_tail"] = env.worker_tail(15)
    return summary


@dataclass
class _Logged:
    """What the symbols' event logs say: events by type, risk breaches, realized PnL per symbol."""

    events: Counter[str] = field(default_factory=Counter)
    breaches: list[dict[str, Any]] = field(default_factory=list)
    realized: dict[str, float] = field(default_factory=dict)


def _read_logs(session: Session) -> _Logged:
    logged = _Logged(realized={s: 0.0 for s in session.symbols})
    for s in session.symbols:
        for _, ev in session.bus.read_log(s):
            kind = ev.event_type.value
            logged.events[kind] += 1
            if kind == "risk.limit_breached":
                logged.breaches.append(
                    {
                        "symbol": s,
                        "rule": ev.data.get("rule"),
                        "limit": ev.data.get("limit"),
                        "value": ev.data.get("value"),
                        "source": ev.source,
                    }
                )
            if kind in ("position.closed", "position.partially_closed"):
                logged.realized[s] += float(ev.data.get("pnl", 0) or 0)
    return logged


def _tasks(session: Session, drained: bool) -> dict[str, Any]:
    """The worker's task counters (the stats hash: ``run:<task>``, ``retried:<task>``...) and the task events."""
    client, keys = session.bus.client, session.bus.keys
    stats = {_text(k): int(v) for k, v in client.hgetall(keys.stats()).items()}

    def total(what: str) -> int:
        return sum(v for k, v in stats.items() if k.startswith(f"{what}:"))

    return {
        "dispatched": len(session.timed.expected_tasks),
        "not_dispatched": session.timed.not_dispatched,
        "run": total("run"),
        "retried": total("retried"),
        "dead_lettered": total("dead_lettered"),
        "dead_letters_stream": count_dead_letters(client, keys),
        "by_task": {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("run:")},
        "task_events": dict(session.monitor.counts),
        "all_finished": drained,
    }


def _positions(session: Session, realized: dict[str, float]) -> tuple[dict[str, Any], bool]:
    """Per symbol: the paper account's open positions and PnL; and whether the Redis state projection
    holds exactly the account's positions."""
    venue, strategy = session.venue, session.strategy
    positions: dict[str, Any] = {}
    matches = True
    venue_positions = venue.positions()
    for s in session.symbols:
        mine = [p for p in venue_positions if p["symbol"] == s]
        projected = session.bus.get_active_positions(s)
        matches &= sorted(p["position_id"] for p in mine) == sorted(str(p.get("position_id")) for p in projected)
        unreal = Decimal(0)
        for p in mine:
            full = venue.position(p["position_id"])
            if full is not None:
                unreal += _pnl(venue, full)
        positions[s] = {
            "price": str(venue.prices.get(s)),
            "open": [
                {
                    "position_id": p["position_id"],
                    "direction": p["direction"],
                    "volume": p["volume"],
                    "entry_price": p["entry_price"],
                }
                for p in mine
            ],
            "projection_active": len(projected),
            "orders": strategy.books[s].orders,
            "refused": strategy.books[s].refused,
            "realized_pnl": round(realized[s], 2),
            "unrealized_pnl": round(float(unreal), 2),
        }
    return positions, matches


def _pnl(venue: PaperVenue, pos: dict[str, Any]) -> Decimal:
    px = venue.prices[pos["symbol"]]
    sign = 1 if pos["direction"] == "LONG" else -1
    size = venue.contract_sizes.get(pos["symbol"], Decimal(1))
    return sign * (px - pos["entry_price"]) * pos["volume"] * size


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def problems(summary: dict[str, Any]) -> list[str]:
    out = []
    t = summary["tasks"]
    if not summary["risk_breaches"]:
        out.append("no risk breach was raised: is the risk task running (queue tradebus.risk)?")
    if not summary["kill_switch_refusals"]:
        out.append("no order was refused by the kill switch")
    if not t["all_finished"]:
        out.append(f"not every dispatched task finished ({t['task_events']}, {t['dispatched']} dispatched)")
    if t["run"] == 0:
        out.append("the worker ran no task")
    if not summary["state_projection_matches_broker"]:
        out.append("the state projection in Redis does not match the paper account's positions")
    return out


def _bus_figures(session: Session) -> dict[str, Any]:
    """The figures `tradebus top` and `tradebus metrics` show, read the same way (bus.monitor)."""
    snap = snapshot(session.bus.client, session.bus.keys)
    return {"pending_dispatch": snap.pending_dispatch, "dead_letters": snap.dead_letters,
            "kill_switches": snap.kill_switches}  # fmt: skip


def _route_figures(session: Session, env: DemoEnvironment) -> dict[str, Any]:
    """Per route, what `tradebus top` shows and a scrape of the worker returns (tradebus_route_done,
    tradebus_route_latency_mean_seconds, tradebus_logroute_*): events done, mean publish-to-done, lag."""
    from bus.monitor.routes import RouteReader
    from celery_app import routing_from_settings

    out = {}
    for r in RouteReader(session.bus.client, session.bus.keys, routing_from_settings(env.settings)).poll():
        out[r.route] = {"done": r.done, "latency_mean_ms": None if r.latency_ms is None else round(r.latency_ms, 1),
                        "lag": r.lag, "pending": r.pending}  # fmt: skip
    return out


def render(summary: dict[str, Any], console: Console) -> None:
    console.rule("[bold]tradebus demo: summary")
    console.print(
        f"ran {summary['runtime_seconds']}s on {summary['redis']}; worker "
        f"{summary['worker']['name']} ({summary['worker']['pool']} x{summary['worker']['concurrency']})"
    )
    ev = Table(title=f"events by type ({summary['events_total']})", title_justify="left")
    ev.add_column("type")
    ev.add_column("count", justify="right")
    for k, v in summary["events_by_type"].items():
        ev.add_row(k, str(v))
    console.print(ev)
    _render_tasks(summary["tasks"], console)
    routes = Table(title="routes (publish -> done)", title_justify="left")
    for c in ("route", "events done", "mean latency ms", "lag", "pending"):
        routes.add_column(c, justify="left" if c == "route" else "right")
    for name, r in summary["routes"].items():
        routes.add_row(
            name, *("-" if r[k] is None else str(r[k]) for k in ("done", "latency_mean_ms", "lag", "pending"))
        )
    console.print(routes)
    b = summary["bus"]
    switches = ", ".join(sorted(b["kill_switches"])) or "none"
    console.print(f"  pending dispatch {b['pending_dispatch']}, dead letters {b['dead_letters']}, "
                  f"kill switches: {switches}")  # fmt: skip
    _render_positions(summary, console)
    _render_findings(summary, console)


def _render_tasks(t: dict[str, Any], console: Console) -> None:
    tasks = Table(title="Celery tasks", title_justify="left")
    for c in ("dispatched", "run", "retried", "dead-lettered", "not dispatched (beat re-sends)"):
        tasks.add_column(c, justify="right")
    tasks.add_row(
        str(t["dispatched"]),
        str(t["run"]),
        str(t["retried"]),
        str(t["dead_lettered"]),
        str(t["not_dispatched"]),
    )
    console.print(tasks)
    if t["by_task"]:
        console.print("  run by task: " + ", ".join(f"{k} {v}" for k, v in sorted(t["by_task"].items())))


def _render_positions(summary: dict[str, Any], console: Console) -> None:
    pos = Table(title="positions and PnL", title_justify="left")
    for c in (
        "symbol",
        "last price",
        "open positions",
        "in Redis state",
        "orders",
        "refused",
        "realized",
        "unrealized",
    ):
        pos.add_column(c, justify="right" if c not in ("symbol", "open positions") else "left")
    for s, p in summary["positions"].items():
        opened = ", ".join(f"{o['direction']} {o['volume']}@{o['entry_price']}" for o in p["open"]) or "-"
        pos.add_row(
            s,
            p["price"],
            opened,
            str(p["projection_active"]),
            str(p["orders"]),
            str(p["refused"]),
            f"{p['realized_pnl']:.2f}",
            f"{p['unrealized_pnl']:.2f}",
        )
    console.print(pos)
    pnl = summary["pnl"]
    console.print(f"PnL: realized {pnl['realized']:.2f}, unrealized {pnl['unrealized']:.2f}, equity {pnl['equity']}")


def _render_findings(summary: dict[str, Any], console: Console) -> None:
    """Breaches, refusals, latency, and the verdict."""
    for b in summary["risk_breaches"]:
        console.print(f"[yellow]risk breach[/] {b['symbol']}: {b['rule']} ({b['value']} > {b['limit']})")
    refusals = summary["kill_switch_refusals"]
    for r in refusals[:2]:
        console.print(
            f"[red]refused[/] {r['symbol']} order {r['order_id']}: {escape(str(r['reason']))}",
            soft_wrap=True,
        )
    if len(refusals) > 2:
        console.print(f"[red]refused[/] ... and {len(refusals) - 2} more orders on halted symbols")
    lat = summary["latency"]
    console.print(
        f"latency: publish p50 {lat['publish']['p50_ms']} ms, p99 {lat['publish']['p99_ms']} ms "
        f"(n={lat['publish']['n']}); publish -> task start p50 "
        f"{lat['publish_to_task_start']['p50_ms']} ms, p99 {lat['publish_to_task_start']['p99_ms']} ms "
        f"(n={lat['publish_to_task_start']['n']})"
    )
    if summary["ok"]:
        console.print(
            "[bold green]demo OK[/]: every event logged, broadcast and routed; tasks ran; "
            "state matches the paper account"
        )
    else:
        for p in summary["problems"]:
            console.print(f"[bold red]problem:[/] {escape(p)}")
        console.print(f"[dim]worker log (last lines):[/] {escape(summary.get('worker_log_tail', ''))}")
