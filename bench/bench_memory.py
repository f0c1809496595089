"""State projection: Redis memory per event and apply throughput, this layout beside the old one.

    python bench/bench_memory.py [--events 100000] [--runs 5] [--baseline 1a0c130]

Each layout projects the same complete trades (order created + filled, position opened + closed: 4
events each) on its own fresh redis-server (bus.embedded), in pipelines of 1,000 as rebuild does:

* old: ``state.py`` and ``state.lua`` of the ``--baseline`` commit (``git show``), run as they were
  (per-entity SET of applied event ids, nothing expires);
* new, retention 0 (keep forever) and new, retention 7 days;
* new, retention 1 s, measured again once it has passed (what stays for good).

Memory: INFO used_memory before/after (the whole server, allocator overhead included) and the exact
MEMORY USAGE of the keys w/o TTL without a TTL, per event. Throughput: old vs new script in interleaved
rounds on one server, pipelined (100 per round trip: the server's cost per event shows) and one event
per round trip (the state task's shape); events/s, median of ``--runs``.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

from bus.core import state
from bus.core.keys import Keys
from bus.core.keyspace import delete_matching
from bus.core.scripts import execute_pipeline
from bus.embedded import EmbeddedRedis, free_port, redis_server_binary
from bus.events.model import TradeEvent

REPO = Path(__file__).resolve().parent.parent
SYMBOL = "XAUUSD"
WEEK = 7 * 24 * 3600


class OldKeys(Keys):
    """Keys with the name the old layout used for its per-entity applied-id sets."""

    def applied(self, symbol: str, kind: str, entity_id: str) -> str:
        return f"{self._sym(symbol)}:applied:{kind}:{entity_id}"


def old_projection(commit: str) -> ModuleType:
    """bus/core/state.py and state.lua as they were at ``commit``: the old layout, Python side included."""

    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, check=True, capture_output=True,
                              text=True).stdout  # fmt: skip

    module = ModuleType(f"state_at_{commit}")
    module.__package__ = "bus.core"
    # LuaScript now names the script's package too; the script body is replaced just below anyway
    source = show("bus/core/state.py").replace('LuaScript("state.lua")', 'LuaScript("bus.core", "state.lua")')
    exec(compile(source, module.__name__, "exec"), module.__dict__)  # noqa: S102
    script = module.SCRIPT
    script.body = show("bus/core/state.lua")
    script.sha = hashlib.sha1(script.body.encode()).hexdigest()
    return module


def trades(n_events: int) -> list[TradeEvent]:
    out: list[TradeEvent] = []
    for n in range(n_events // 4):
        o, p = f"o{n}", f"p{n}"
        out += [
            TradeEvent.create_order_created(SYMBOL, o, "BUY", 2000.5, 0.1, sl=1995.0, tp=2010.0),
            TradeEvent.create_order_filled(SYMBOL, o, 2000.4, 0.1),
            TradeEvent.create_position_opened(SYMBOL, p, 2000.4, 0.1, "LONG", sl=1995.0),
            TradeEvent.create_position_closed(SYMBOL, p, 2001.0, 0.06),
        ]
    return out


def project(client: redis.Redis, keys: Keys, events: list[TradeEvent], layout: Any, batch: int) -> None:
    """Apply ``events`` with ``layout``: the old projection module, or a retention (s) for this one."""
    old = isinstance(layout, ModuleType)
    scripts = (layout.SCRIPT,) if old else (state.SCRIPT,)
    for i in range(0, len(events), batch):
        pipe = client.pipeline(transaction=False)
        for e in events[i : i + batch]:
            if old:
                layout.stage_apply(pipe, keys, e)
            else:
                state.stage_apply(pipe, keys, e, retention=layout)
        for r in execute_pipeline(pipe, scripts):
            if isinstance(r, Exception):
                raise r


def never_expiring_bytes(client: redis.Redis) -> tuple[int, int]:
    """(keys, exact bytes) of the keys without a TTL. SCAN also drops keys whose TTL has passed."""
    names = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for k in names:
        pipe.pttl(k)
        pipe.memory_usage(k, samples=0)
    replies = pipe.execute()
    sizes = [int(size or 0) for ttl, size in zip(replies[::2], replies[1::2], strict=True) if ttl == -1]
    return len(sizes), sum(sizes)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])  # type: ignore[index]


def memory_row(binary: str, events: list[TradeEvent], layout: Any, wait_out: float) -> tuple[float, float, int]:
    """(used_memory delta per event, never-expiring bytes per event, keys) on a fresh server."""
    with EmbeddedRedis(binary=binary) as server:
        client = redis.Redis.from_url(server.url)
        before = used_memory(client)
        project(client, OldKeys("bench"), events, layout, 1_000)
        if wait_out:
            time.sleep(wait_out)  # a bench, not a test: let the 1 s retention pass
        keys, persistent = never_expiring_bytes(client)
        delta = used_memory(client) - before
        client.close()
    return delta / len(events), persistent / len(events), keys


def rate(fn: Any, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def throughput(binary: str, events: list[TradeEvent], layouts: dict[str, Any], runs: int) -> None:
    paths = [(name, batch) for batch in (100, 1) for name in layouts]
    samples: dict[tuple[str, int], list[float]] = {path: [] for path in paths}
    with EmbeddedRedis(binary=binary) as server:
        client = redis.Redis.from_url(server.url)
        for _ in range(runs):  # interleaved rounds, so load changes hit every path alike
            for name, batch in paths:
                keys = OldKeys(f"tp-{uuid.uuid4().hex[:8]}")
                apply = lambda: project(client, keys, events, layouts[name], batch)  # noqa: B023, E731
                samples[(name, batch)].append(rate(apply, len(events)))
                delete_matching(client, f"{keys.prefix}:*")
        client.close()
    print(f"\nstate apply throughput, {len(events):,} events, median of {runs} interleaved rounds:")
    for (name, batch), values in samples.items():
        median = statistics.median(values)
        ratio = median / statistics.median(samples[("old", batch)])
        print(f"{name + f', {batch} per round trip':42s} {median:10,.0f} events/s  {ratio:6.3f}x old")


# --- instruction counts (valgrind): deterministic where wall-clock time on a shared box is not ----


def callgrind_total(dump: Path) -> int:
    return int(next(line for line in dump.read_text().splitlines() if line.startswith("summary:")).split()[1])


class CallgrindServer:
    """A private redis-server under valgrind's callgrind: ``zero()`` resets its count, ``dump()`` returns
    the instructions it ran since."""

    def __init__(self, binary: str) -> None:
        self.port, self.out, self.dumps = free_port(), Path(tempfile.mkdtemp(prefix="tradebus-cg-")), 0
        self.process = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}/cg.%p",
                                         binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        self.client = redis.Redis(port=self.port)

    def __enter__(self) -> CallgrindServer:
        deadline = time.monotonic() + 60  # valgrind starts a server slowly
        while True:
            try:
                self.client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise
                time.sleep(0.2)

    def zero(self) -> None:
        subprocess.run(["callgrind_control", "-z", str(self.process.pid)], check=True, capture_output=True)

    def dump(self) -> int:
        subprocess.run(["callgrind_control", "-d", str(self.process.pid)], check=True, capture_output=True)
        self.dumps += 1
        return callgrind_total(self.out / f"cg.{self.process.pid}.{self.dumps}")

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(60)
        shutil.rmtree(self.out, ignore_errors=True)


def server_instructions(binary: str, events: list[TradeEvent], layout: Any) -> float:
    """Instructions redis-server runs per event to apply ``events`` (pipelined by 100), after a warm-up."""
    with CallgrindServer(binary) as server:
        warm, run = events[:400], events[400:]
        project(server.client, OldKeys("warm"), warm, layout, 100)
        server.zero()
        project(server.client, OldKeys("run"), run, layout, 100)
        return server.dump() / len(run)


def client_instructions(layout_name: str, n: int, baseline: str) -> float:
    """Instructions this process spends per event staging and packing ``n`` events (two runs, 0 and n)."""
    totals = []
    for count in (0, n):
        with tempfile.TemporaryDirectory() as out:
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg", sys.executable, __file__,
                            "--baseline", baseline, "--stage-only", layout_name, "--events", str(count)],
                           check=True, capture_output=True)  # fmt: skip
            totals.append(callgrind_total(Path(out) / "cg"))
    return (totals[1] - totals[0]) / n


def stage_only(layout: Any, events: list[TradeEvent]) -> None:
    """What the client does per event, without a server: stage the calls, pack them for the wire."""
    client = redis.Redis()
    connection = client.connection_pool.make_connection()
    for i in range(0, len(events), 100):
        pipe = client.pipeline(transaction=False)
        for e in events[i : i + 100]:
            if isinstance(layout, ModuleType):
                layout.stage_apply(pipe, OldKeys("x"), e)
            else:
                state.stage_apply(pipe, OldKeys("x"), e, retention=layout, now=time.time())
        connection.pack_commands([c[0] for c in pipe.command_stack])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--throughput-events", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline", default="1a0c130", help="commit whose state.py/state.lua are the old layout")
    ap.add_argument("--redis-server", default=None, help="redis-server binary (default: the first on PATH)")
    ap.add_argument("--instructions", type=int, default=0, metavar="N",
                    help="also count instructions per event over N events with valgrind")  # fmt: skip
    ap.add_argument("--stage-only", help=argparse.SUPPRESS)
    a = ap.parse_args()
    layouts = {"old": old_projection(a.baseline), "new, retention 0": 0, "new, retention 7 days": WEEK}
    events = trades(a.events)
    if a.stage_only:
        stage_only(layouts[a.stage_only], events)
        return
    binary = a.redis_server or redis_server_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()[2]
    print(f"{version} ({binary})")
    print(f"\nmemory after {len(events):,} events ({len(events) // 4:,} complete trades), fresh server each:")
    print(f"{'layout':42s} {'used_memory/event':>18s} {'never expire/event':>19s} {'keys w/o TTL':>13s}")
    for name, layout, wait_out in [
        (f"old ({a.baseline}: applied-id sets)", layouts["old"], 0.0),
        ("new, retention 0 (keep forever)", 0, 0.0),
        ("new, retention 7 days", WEEK, 0.0),
        ("new, retention 1 s, after it passed", 1, 1.5),
    ]:
        delta, persistent, keys = memory_row(binary, events, layout, wait_out)
        print(f"{name:42s} {delta:16,.1f} B {persistent:17,.1f} B {keys:13,}")
    throughput(binary, events[: a.throughput_events], layouts, a.runs)
    if a.instructions:
        print(f"\ninstructions per event (valgrind), {a.instructions:,} events pipelined by 100:")
        base = None
        for name, layout in layouts.items():
            server = server_instructions(binary, events[: a.instructions + 400], layout)
            client = client_instructions(name, a.instructions, a.baseline)
            base = base or (server, client)
            print(f"{name:24s} server {server:9,.0f} ({server / base[0]:.3f}x)  client {client:9,.0f} "
                  f"({client / base[1]:.3f}x)  total {(server + client) / sum(base):.3f}x")  # fmt: skip


if __name__ == "__main__":
    main()
