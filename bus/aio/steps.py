"""The asyncio driver of the bus's steps (bus/core/steps.py): the same conversations as the blocking
bus, awaited on a redis.asyncio client.

``Blocking`` requests (a dispatcher's ``send_many`` to a separate broker) run in a worker thread with
``asyncio.to_thread``: the dispatcher protocol is blocking, and the event is already logged when it
runs, so a slow broker delays that publish's receipt, never the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bus.core.steps import Blocking, Command, Deliver, Execute, Steps

T = TypeVar("T")

AsyncDeliver = Callable[[Any, Any], Awaitable[None]]


async def run(client: Any, steps: Steps[T], deliver: AsyncDeliver | None = None) -> T:
    """Drive ``steps`` on a redis.asyncio ``client``; ``await deliver(sub, event)`` takes ``Deliver``."""
    reply: Any = None
    error: Exception | None = None
    try:
        while True:
            try:
                request = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            error = None
            try:  # inline, not a helper coroutine: this runs once per command of every publish
                if type(request) is Command:
                    reply = await client.execute_command(*request.args)
                elif type(request) is Execute:
                    reply = await request.pipe.execute(raise_on_error=False)
                elif type(request) is Blocking:
                    reply = await asyncio.to_thread(request.fn, *request.args)
                elif type(request) is Deliver and deliver is not None:
                    await deliver(request.sub, request.event)
                    reply = None
                else:
                    raise TypeError(f"no driver for {request!r}")
            except Exception as e:  # noqa: BLE001 - the step decides; unhandled, it propagates from throw()
                reply, error = None, e
    finally:
        steps.close()  # cancelled mid-way: the step's own cleanup runs now, not at garbage collection
