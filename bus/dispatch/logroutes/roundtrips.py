"""One pooled connection on which a drain sends several commands per round trip.

redis-py's Pipeline sends WATCH (and every command after it until MULTI) alone, one round trip each.
A drain needs ``SET NX (lease) + WATCH + its fenced read`` together, and ``MULTI ... EXEC`` with the next
read inside; on a busy server each round trip is the cost (about 1.5 ms each here under load), so the
drain packs its commands itself. Replies are raw (no redis-py response callbacks): the drain reads
only script replies, XACK counts and EXEC arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import ResponseError


class RoundTrips:
    """Owns one connection of ``client``'s pool until ``close``; a WATCH still active is cleared then.
    ``client`` is one server's (on a Redis Cluster, the slot's master: bus.core.connection.slot_client)."""

    def __init__(self, client: redis.Redis) -> None:
        self.pool = client.connection_pool
        try:
            self.conn = self.pool.get_connection()
        except TypeError:  # redis-py < 5.3 wants a command name
            self.conn = self.pool.get_connection("MULTI")  # type: ignore[call-arg]
        self.watching = False

    def send(self, *commands: Sequence[Any]) -> list[Any]:
        """Send ``commands`` in one write; their replies in order (an error reply as a ResponseError)."""
        try:
            self.conn.send_packed_command(self.conn.pack_commands(commands))
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(self.conn.read_response())
                except ResponseError as e:
                    replies.append(e)
        except BaseException:
            self.conn.disconnect()  # replies may be left unread: the connection cannot be reused as is
            self.watching = False  # (a new socket starts with no WATCH)
            raise
        for command in commands:
            name = str(command[0]).upper()
            if name == "WATCH":
                self.watching = True
            elif name in ("EXEC", "UNWATCH", "DISCARD"):
                self.watching = False
        return replies

    def close(self) -> None:
        try:
            if self.watching:  # the next user of this pooled connection must not inherit our WATCH
                self.send(("UNWATCH",))
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # send() disconnected it: nothing is watched on a new socket
        finally:
            self.pool.release(self.conn)
