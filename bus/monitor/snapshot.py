"""One round trip's view of the bus's Redis-side figures."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from bus.core.keys import Keys

#: stats hash fields per route, written by the workers (celery_app/tasks/base.py: count_run)
DONE_PREFIX = "done:"
LATENCY_PREFIX = "latency_ms:"


def route_done_field(route: str) -> str:
    """Events of ``route`` whose task or drain finished."""
    return DONE_PREFIX + route


def route_latency_field(route: str) -> str:
    """Their publish-to-done milliseconds, summed."""
    return LATENCY_PREFIX + route


@dataclass(frozen=True)
class BusSnapshot:
    pending_dispatch: int  # logged events whose tasks are not yet recorded as enqueued
    dead_letters: int
    kill_switches: dict[str, str]  # symbol -> reason
    symbols: int  # symbols with a log
    #: the stats hash: ``run:<task>``, ``retried:<task>``, ``dead_lettered:<task>`` -> count
    task_counts: dict[str, int] = field(default_factory=dict)

    def route_latency(self) -> dict[str, tuple[int, float]]:
        """Per route: events done and their mean publish-to-done milliseconds (the workers' figures)."""
        out = {}
        for key, n in self.task_counts.items():
            if key.startswith(DONE_PREFIX) and n:
                route = key.removeprefix(DONE_PREFIX)
                out[route] = (n, self.task_counts.get(route_latency_field(route), 0) / n)
        return out

    def tasks(self, what: str) -> dict[str, int]:
        """``what`` (run, retried, dead_lettered) per task name."""
        prefix = f"{what}:"
        return {k.removeprefix(prefix): v for k, v in self.task_counts.items() if k.startswith(prefix)}


def snapshot(client: redis.Redis, keys: Keys) -> BusSnapshot:
    """Read the figures in two pipelines (O(1) commands plus the stats and kill-switch hashes, then one
    XLEN per symbol: its log routes' dead letters, bus.dispatch.deadletters)."""
    pipe = client.pipeline(transaction=False)
    pipe.zcard(keys.pending_dispatch())
    pipe.xlen(keys.dead_letters())
    pipe.hgetall(keys.kill_switch())
    pipe.smembers(keys.symbols())
    pipe.hgetall(keys.stats())
    pending, dead, switches, symbols, stats = pipe.execute()
    if symbols:
        pipe = client.pipeline(transaction=False)
        for symbol in sorted(symbols):
            pipe.xlen(keys.symbol_dead_letters(_s(symbol)))
        dead += sum(int(n) for n in pipe.execute())
    return BusSnapshot(
        pending_dispatch=int(pending),
        dead_letters=int(dead),
        kill_switches={_s(k): _s(v) for k, v in switches.items()},
        symbols=len(symbols),
        task_counts={_s(k): int(v) for k, v in stats.items()},
    )


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
