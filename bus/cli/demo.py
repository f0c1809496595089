"""`tradebus demo`: the whole bridge in one command (``bus.demo`` runs it; this is its command line)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from bus.cli.common import EXIT_PROBLEM, EXIT_USAGE, CliContext, CliError, console, print_json

POOLS = ("prefork", "threads", "solo")


@contextmanager
def _leaving_on_sigterm() -> Iterator[None]:
    """SIGTERM (``kill``, a supervisor's stop) leaves through the demo's context managers, which stop its
    worker and embedded Redis: Python's default SIGTERM ends the process without running them, and both
    would outlive it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    ctx: typer.Context,
    seconds: Annotated[float, typer.Option("--seconds", min=3, max=45, help="Length of the trading session.")] = 10.0,
    symbols: Annotated[int, typer.Option("--symbols", min=2, max=3, help="How many symbols to trade.")] = 3,
    embedded: Annotated[bool, typer.Option("--embedded", help="Always start an embedded Redis.")] = False,
    pool: Annotated[str, typer.Option("--pool", help="Worker pool: prefork, threads or solo.")] = "prefork",
    seed: Annotated[int | None, typer.Option("--seed", help="Random-walk seed (repeatable runs).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON only.")] = False,
    linger: Annotated[
        float,
        typer.Option(
            "--linger",
            min=0,
            max=600,
            help="After the summary keep the worker and Redis up this many seconds (scrape, top).",
        ),
    ] = 0.0,  # fmt: skip
) -> None:
    """Run the whole bridge: Redis, a Celery worker, a paper-traded session, and a summary."""
    from bus.demo.report import render
    from bus.demo.run import run_demo

    obj: CliContext = ctx.obj
    if pool not in POOLS:
        raise CliError(f"--pool must be prefork, threads or solo, not {pool!r}", EXIT_USAGE)

    def say(msg: str) -> None:
        if not as_json:  # stdout carries only the JSON summary then
            console.print(f"[dim]demo:[/] {msg}", soft_wrap=True)

    def show(summary: dict[str, Any]) -> None:
        if as_json:
            print_json(summary)
        else:
            render(summary, console)

    with _leaving_on_sigterm():
        summary = run_demo(
            obj.settings,
            seconds=seconds,
            n_symbols=symbols,
            embedded=embedded,
            pool=pool,
            seed=seed,
            say=say,
            live_console=console if not as_json and console.is_terminal else None,
            linger=linger,
            on_summary=show,
        )
    if not linger:
        show(summary)
    if not summary["ok"]:
        raise typer.Exit(EXIT_PROBLEM)
