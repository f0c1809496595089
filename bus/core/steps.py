"""Sans-I/O steps: the bus's Redis conversations written once, run by a blocking or an asyncio driver.

A step function is a generator that yields *requests* and receives their replies: ``Command`` (one
command on the client), ``Execute`` (a pipeline it staged, run with errors returned in place),
``Blocking`` (a blocking call such as a dispatcher's broker round trip) and ``Deliver`` (hand an event
to the subscriber's consumer). A failed request is thrown back into the generator at its ``yield``,
so the step decides what a NOSCRIPT or a broker error means. ``run`` here drives steps on a redis-py
client; ``bus.aio.steps.run`` drives the same steps on a ``redis.asyncio`` client, so the wire
format, the scripts, routing and the healing decisions exist once.

Staging works on either kind of pipeline: queueing a command (``pipe.execute_command``,
``pipe.lpush``...) is synchronous on both; only ``execute`` differs.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")


class Command(NamedTuple):
    """Send one command (``client.execute_command(*args)``: redis-py's reply parsing applies)."""

    args: tuple[Any, ...]


class Execute(NamedTuple):
    """Run a pipeline the step staged; the reply is its results, errors in place."""

    pipe: Any


class Blocking(NamedTuple):
    """Call ``fn(*args)``, which blocks (the asyncio driver runs it in a worker thread)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


class Deliver(NamedTuple):
    """Hand ``event`` of subscription ``sub`` to the consumer (handlers, or an async iterator's queue)."""

    sub: Any
    event: Any


Request = Command | Execute | Blocking | Deliver
Steps = Generator[Request, Any, T]


def run(client: Any, steps: Steps[T], deliver: Callable[[Any, Any], None] | None = None) -> T:
    """Drive ``steps`` on a blocking redis-py ``client``; ``deliver(sub, event)`` takes ``Deliver``."""
    reply: Any = None
    error: Exception | None = None
    try:
        while True:
            try:
                request = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            error = None
            try:
                reply = perform(client, request, deliver)
            except Exception as e:  # noqa: BLE001 - the step decides; unhandled, it propagates from throw()
                reply, error = None, e
    finally:
        steps.close()  # interrupted (KeyboardInterrupt...): the step's own cleanup (a span) runs here


def perform(client: Any, request: Request, deliver: Callable[[Any, Any], None] | None) -> Any:
    if type(request) is Command:
        return client.execute_command(*request.args)
    if type(request) is Execute:
        return request.pipe.execute(raise_on_error=False)
    if type(request) is Blocking:
        return request.fn(*request.args)
    if type(request) is Deliver and deliver is not None:
        return deliver(request.sub, request.event)
    raise TypeError(f"no driver for {request!r}")
