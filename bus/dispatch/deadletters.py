"""Dead letters: tasks that failed past their retries, and malformed task messages (bad input).

Streams of entries, one per failure with the event JSON (or the raw message a worker refused), route, task,
queue, attempts and reason, so an operator can list it, replay it (re-enqueue through a Dispatcher) or purge
it. Tasks and workers write to the global stream ``keys.dead_letters()``; a log route's drain writes to its
symbol's stream ``keys.symbol_dead_letters(symbol)``, inside the transaction that acknowledges the entry,
which must stay in the symbol's Redis Cluster slot (effectively-once effects). The readers here merge
them: a symbol's dead letter has the id ``SYMBOL/<stream id>``, a global one the bare stream id.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import redis

from bus.core.keys import Keys
from bus.core.wire import text
from bus.dispatch.routing import Route, RoutingTable
from bus.errors import BusError
from bus.events.model import TradeEvent

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT


class Replayer(Protocol):
    """What ``replay`` needs of a Dispatcher (a Protocol: the log routes' drain, which the dispatcher
    imports, writes dead letters with this module)."""

    routing: RoutingTable

    def send(self, event: TradeEvent, payload: bytes | str, routes: Any, log_id: str | None = None, *,
             strict: bool | None = None) -> Any: ...  # fmt: skip


# Dead letters kept (approximately) in the global stream and in each symbol's; the oldest go first.
DEAD_LETTER_MAXLEN = 100_000
SYMBOL_DEAD_LETTER_MAXLEN = 10_000
# between a symbol and the stream id in a symbol's dead-letter id (a stream id has none)
SYMBOL_SEPARATOR = "/"
# Bytes of a refused message's content kept in its dead letter: enough to see what it was, while a
# stream of huge hostile messages cannot grow the stream by more than this per entry.
MAX_CONTENT_BYTES = 64 * 1024
# ``encoding`` of content that is not UTF-8 text (garbage bytes, a binary body): base64 of the bytes.
BASE64 = "base64"
# XRANGE of the dead-letter stream: bytes from the bus client, str from a decoding (CLI) one
_Rows = list[tuple[bytes | str, dict[Any, Any]]]


@dataclass(frozen=True)
class DeadLetter:
    id: str
    event_json: str
    route: str
    task: str
    attempts: int
    reason: str
    task_id: str
    at: float
    queue: str = ""
    encoding: str = ""  # "" when ``event_json`` is the text itself, BASE64 when it encodes bytes
    size: int = 0  # bytes of the original content; more than ``len(raw)`` when it was cut
    log_id: str = ""  # the log entry, for a log route's dead letter

    @property
    def raw(self) -> bytes:
        """The content as received (its first MAX_CONTENT_BYTES)."""
        if self.encoding == BASE64:
            return base64.b64decode(self.event_json)
        return self.event_json.encode()

    @property
    def truncated(self) -> bool:
        return self.size > len(self.raw)

    @property
    def event(self) -> TradeEvent | None:
        """The event, or None if the dead letter is a malformed message."""
        if self.encoding or self.truncated:
            return None
        try:
            return TradeEvent.from_json(self.event_json)
        except (ValueError, TypeError):
            return None


def dead_letter(
    client: redis.Redis | Any,
    keys: Keys,
    *,
    event_json: str | bytes,
    route: str,
    task: str,
    attempts: int,
    reason: str,
    task_id: str = "",
    queue: str = "",
    log_id: str = "",
    symbol: str = "",
) -> str:
    """Append one dead letter; ``client`` may be a pipeline (then the id comes from execute()). With
    ``symbol`` (a log route's drain) it goes to that symbol's stream, in the symbol's slot.

    ``event_json`` may be any bytes a worker refused: kept as text when it is UTF-8, else base64 (with
    ``encoding`` saying so), either way cut to MAX_CONTENT_BYTES (``size`` keeps the full length).
    """
    content = event_json.encode("utf-8", "surrogatepass") if isinstance(event_json, str) else bytes(event_json)
    kept = content[:MAX_CONTENT_BYTES]
    body, encoding = _utf8(kept, cut=len(kept) < len(content)), ""
    if body is None:
        body, encoding = base64.b64encode(kept).decode("ascii"), BASE64
    fields: dict[FieldT, EncodableT] = {
        "event": body,
        "route": route or "",
        "task": task or "",
        "attempts": int(attempts),
        "reason": reason[:2000],
        "task_id": task_id or "",
        "at": f"{time.time():.3f}",
        "queue": queue or "",
        "encoding": encoding,
        "size": len(content),
    }
    if log_id:
        fields["log_id"] = log_id
    if symbol:
        stream, maxlen = keys.symbol_dead_letters(symbol), SYMBOL_DEAD_LETTER_MAXLEN
    else:
        stream, maxlen = keys.dead_letters(), DEAD_LETTER_MAXLEN
    result = client.xadd(stream, fields, maxlen=maxlen, approximate=True)
    if not isinstance(result, bytes | str):
        return ""
    return f"{symbol}{SYMBOL_SEPARATOR}{text(result)}" if symbol else text(result)


def list_dead_letters(client: redis.Redis, keys: Keys, *, count: int = 100) -> list[DeadLetter]:
    """The oldest ``count`` dead letters of every stream (global and per symbol), oldest first."""
    merged: list[DeadLetter] = []
    for symbol, stream in _streams(client, keys):
        rows = cast(_Rows, client.xrange(stream, "-", "+", count=count))
        merged += [_parse(i, f, symbol) for i, f in rows]
    merged.sort(key=lambda d: (d.at, d.id))
    return merged[:count]


def count_dead_letters(client: redis.Redis, keys: Keys) -> int:
    """Dead letters in every stream, global and per symbol."""
    return sum(int(client.xlen(stream)) for _, stream in _streams(client, keys))


def get_dead_letter(client: redis.Redis, keys: Keys, dead_letter_id: str) -> DeadLetter | None:
    symbol, stream, entry_id = _locate(keys, dead_letter_id)
    rows = cast(_Rows, client.xrange(stream, entry_id, entry_id))
    return _parse(*rows[0], symbol) if rows else None


def _streams(client: redis.Redis, keys: Keys) -> list[tuple[str, str]]:
    """(symbol or "", stream) of the global stream and of every known symbol's."""
    symbols = sorted(text(s) for s in cast(set[Any], client.smembers(keys.symbols())))
    return [("", keys.dead_letters())] + [(s, keys.symbol_dead_letters(s)) for s in symbols]


def _locate(keys: Keys, dead_letter_id: str) -> tuple[str, str, str]:
    """(symbol, stream, stream id) of a dead-letter id as the readers give it."""
    symbol, _, entry_id = dead_letter_id.rpartition(SYMBOL_SEPARATOR)
    return symbol, keys.symbol_dead_letters(symbol) if symbol else keys.dead_letters(), entry_id


def replay(client: redis.Redis, keys: Keys, dispatcher: Replayer, ids: list[str] | None = None) -> list[str]:
    """Re-enqueue dead letters (all, or ``ids``) through ``dispatcher`` and delete them.

    The route is looked up by name in the dispatcher's table; a route that no longer exists is
    rebuilt from the recorded task name. Malformed messages cannot be replayed and stay put.
    Raises DispatchError (nothing deleted) if the broker refuses.
    """
    letters = (
        [d for d in (get_dead_letter(client, keys, i) for i in ids)]
        if ids
        else list_dead_letters(client, keys, count=10_000)
    )
    replayed: list[str] = []
    for d in letters:
        if d is None or d.event is None:
            continue
        route = dispatcher.routing.get(d.route) or Route(d.route or "replay", d.task, _queue_of(d.task))
        dispatcher.send(d.event, d.event_json, [route], strict=True)
        _, stream, entry_id = _locate(keys, d.id)
        client.xdel(stream, entry_id)
        replayed.append(d.id)
    return replayed


def purge(client: redis.Redis, keys: Keys, ids: list[str] | None = None) -> int:
    """Delete the given dead letters, or all of them; returns how many were removed."""
    if ids:
        return sum(int(client.xdel(stream, entry_id)) for _, stream, entry_id in (_locate(keys, i) for i in ids))
    n = 0
    for _, stream in _streams(client, keys):  # one key per DELETE: a Cluster keeps them on different nodes
        n += int(client.xlen(stream))
        client.delete(stream)
    return n


def _queue_of(task: str) -> str:
    parts = task.split(".")
    if len(parts) >= 2 and parts[0] == "tradebus":
        return f"tradebus.{parts[1]}"
    raise BusError(f"cannot replay task {task!r}: its route is gone and its queue is unknown")


def _utf8(data: bytes, *, cut: bool) -> str | None:
    """``data`` as text, or None if it is not UTF-8; a cut may have split its last character (<= 3 bytes)."""
    for drop in range(4 if cut else 1):
        try:
            return data[: len(data) - drop].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def _parse(entry_id: Any, fields: dict[Any, Any], symbol: str = "") -> DeadLetter:
    f = {text(k): text(v) for k, v in fields.items()}
    return DeadLetter(
        id=f"{symbol}{SYMBOL_SEPARATOR}{text(entry_id)}" if symbol else text(entry_id),
        event_json=f.get("event", ""),
        route=f.get("route", ""),
        task=f.get("task", ""),
        attempts=int(f.get("attempts", 0) or 0),
        reason=f.get("reason", ""),
        task_id=f.get("task_id", ""),
        at=float(f.get("at", 0) or 0),
        queue=f.get("queue", ""),
        encoding=f.get("encoding", ""),
        # entries written before sizes were recorded: the content is all there is
        size=int(f.get("size", 0) or 0) or len(f.get("event", "").encode()),
        log_id=f.get("log_id", ""),
    )
