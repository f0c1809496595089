"""Lua scripts shipped as package files: read once, called by SHA, re-sent when the server lost them.

A pipeline must not use redis-py's Script objects (they add a SCRIPT EXISTS round trip per execute);
`stage` queues EVALSHA and `execute_pipeline` re-runs a NOSCRIPT failure with EVAL. Both are written
as steps (bus/core/steps.py), so the asyncio bus runs the same fallbacks.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

import redis
from redis.exceptions import NoScriptError

from bus.core.steps import Command, Execute, Steps, run


class LuaScript:
    """One script file of ``package``: ``call`` (single command) or ``stage`` (queued on a pipeline).

    Build each one once, as a module constant beside the code that runs it (``LuaScript("bus.core",
    "publish.lua")``); every file starts with a comment naming its KEYS and ARGV."""

    __slots__ = ("name", "body", "sha")

    def __init__(self, package: str, filename: str, prelude: tuple[str, ...] = ()) -> None:
        self.name = filename
        files = resources.files(package)
        # ``prelude``: files of functions several scripts share (Lua has no include), loaded before the script
        parts = (*prelude, filename)
        self.body = "".join(files.joinpath(part).read_text(encoding="utf-8") for part in parts)
        self.sha = hashlib.sha1(self.body.encode()).hexdigest()

    def call(self, client: redis.Redis, keys: list[Any], args: list[Any]) -> Any:
        return run(client, self.steps(keys, args))

    def steps(self, keys: list[Any], args: list[Any]) -> Steps[Any]:
        """``call`` as steps: EVALSHA, and EVAL when the server lost the script."""
        try:
            return (yield Command(("EVALSHA", self.sha, len(keys), *keys, *args)))
        except NoScriptError:
            # The server restarted or flushed its script cache; nothing ran. EVAL caches it again.
            return (yield Command(("EVAL", self.body, len(keys), *keys, *args)))

    def stage(self, pipe: Any, keys: list[Any], args: list[Any]) -> None:
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    def load(self, client_or_pipe: Any) -> Any:
        return client_or_pipe.execute_command("SCRIPT", "LOAD", self.body)


class StagedCommands:
    """Records the commands a dispatcher stages (``execute_command``, ``lpush``: all ``stage`` may use of a
    pipeline) as ARGV words for a publish script that runs them itself (log_event.lua: run_staged), so
    they commit with the log entry in the script's one call: each command is its word count, then its words.
    """

    __slots__ = ("words",)

    def __init__(self) -> None:
        self.words: list[Any] = []

    def execute_command(self, *args: Any) -> None:
        self.words += (len(args), *args)

    def lpush(self, name: Any, *values: Any) -> None:
        self.execute_command("LPUSH", name, *values)


def execute_pipeline(pipe: Any, scripts: tuple[LuaScript, ...] = (), *, repeat_last: bool = False) -> list[Any]:
    """Execute ``pipe`` (built with raise_on_error semantics off) and return its results.

    For a transaction pipeline the caller must have queued ``script.load(pipe)`` first (a NOSCRIPT
    inside MULTI would let the other commands run without the script). For a plain pipeline every
    EVALSHA that failed with NOSCRIPT is re-run as EVAL, in order, on the same client; with
    ``repeat_last`` the pipeline's last command (a WAIT) is sent again after them, so it covers them.
    """
    return run(None, pipeline_steps(pipe, scripts, repeat_last=repeat_last))


def pipeline_steps(pipe: Any, scripts: tuple[LuaScript, ...] = (), *, repeat_last: bool = False) -> Steps[list[Any]]:
    """``execute_pipeline`` as steps (``pipe`` may be a redis-py or a redis.asyncio pipeline, or a
    ClusterPipeline)."""
    commands = queued_commands(pipe)
    results: list[Any] = yield Execute(pipe)
    retry = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if retry:
        by_sha = {s.sha: s for s in scripts}
        for i in retry:  # the pipeline is reset after execute and reusable
            args = commands[i]
            pipe.execute_command("EVAL", by_sha[str(args[1])].body, *args[2:])
        if repeat_last:
            retry.append(len(commands) - 1)
            pipe.execute_command(*commands[-1])
        redo = yield Execute(pipe)
        for i, r in zip(retry, redo, strict=True):
            results[i] = r
    return results


def queued_commands(pipe: Any) -> list[tuple[Any, ...]]:
    """The arguments of each command queued on ``pipe``: a Pipeline keeps ``(args, options)`` pairs in
    ``command_stack``; a ClusterPipeline (redis-py 6+) keeps PipelineCommand objects in its execution
    strategy and leaves ``command_stack`` empty."""
    strategy = getattr(pipe, "_execution_strategy", None)
    if strategy is not None:
        return [tuple(command.args) for command in strategy.command_queue]
    return [tuple(args) for args, _ in pipe.command_stack]
