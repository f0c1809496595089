"""Lua scripts shipped as package files: read once, called by SHA, re-sent when the server lost them.

A pipeline must not use redis-py's Script objects (they add a SCRIPT EXISTS round trip per execute);
`stage` queues EVALSHA and `execute_pipeline` re-runs a NOSCRIPT failure with EVAL.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

import redis
from redis.exceptions import NoScriptError


class LuaScript:
    """One script file of ``package``: ``call`` (single command) or ``stage`` (queued on a pipeline).

    Build each one once, as a module constant beside the code that runs it (``LuaScript("bus.core",
    "publish.lua")``); every file starts with a comment naming its KEYS and ARGV."""

    __slots__ = ("name", "body", "sha")

    def __init__(self, package: str, filename: str) -> None:
        self.name = filename
        self.body = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.body.encode()).hexdigest()

    def call(self, client: redis.Redis, keys: list[Any], args: list[Any]) -> Any:
        try:
            return client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # The server restarted or flushed its script cache; nothing ran. EVAL caches it again.
            return client.execute_command("EVAL", self.body, len(keys), *keys, *args)

    def stage(self, pipe: Any, keys: list[Any], args: list[Any]) -> None:
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    def load(self, client_or_pipe: Any) -> Any:
        return client_or_pipe.execute_command("SCRIPT", "LOAD", self.body)


def execute_pipeline(pipe: Any, scripts: tuple[LuaScript, ...] = (), *, repeat_last: bool = False) -> list[Any]:
    """Execute ``pipe`` (built with raise_on_error semantics off) and return its results.

    For a transaction pipeline the caller must have queued ``script.load(pipe)`` first (a NOSCRIPT
    inside MULTI would let the other commands run without the script). For a plain pipeline every
    EVALSHA that failed with NOSCRIPT is re-run as EVAL, in order, on the same client; with
    ``repeat_last`` the pipeline's last command (a WAIT) is sent again after them, so it covers them.
    """
    commands = queued_commands(pipe)
    results = pipe.execute(raise_on_error=False)
    retry = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if retry:
        by_sha = {s.sha: s for s in scripts}
        client = pipe  # the pipeline is reset after execute and reusable
        for i in retry:
            args = commands[i]
            script = by_sha[str(args[1])]
            client.execute_command("EVAL", script.body, *args[2:])
        if repeat_last:
            retry.append(len(commands) - 1)
            client.execute_command(*commands[-1])
        redo = pipe.execute(raise_on_error=False)
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
