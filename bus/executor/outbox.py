"""A local on-disk outbox: events the bus could not take wait here, in order, until Redis is back.

``Outbox`` is the storage (sqlite3 from the stdlib, ``synchronous=FULL`` so every append is fsync'd
before it returns, bounded by a count and a byte size). ``OutboxPublisher`` is the policy: publish
straight to the bus while the outbox is empty; on a connection failure queue the event; while anything
is queued, new events queue behind it so the order is kept; flush (oldest first) on the next publish
attempt and on ``flush()``. Events keep their ``event_id``, so a resend is recognisable downstream.

Exactly once in the log: every event gets a number from the outbox (increasing, never reused, across
restarts too) before its first attempt, and keeps it when it is queued. Through a RedisEventBus the
number travels with the event (bus/core/sequenced.py): an event the bus already logged under its
number is not logged again, so a crash between publish and delete, or a reply lost after Redis ran
the publish, costs nothing but a skipped resend.

One outbox file belongs to one executor process (an exclusive ``flock`` enforces it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import redis

from bus.core.bus import RedisEventBus
from bus.core.sequenced import SequencedPublisher
from bus.errors import BusError, EventValidationError
from bus.events.model import TradeEvent
from bus.observability import metrics

#: most events an outbox holds before it refuses more
DEFAULT_OUTBOX_MAX_EVENTS = 100_000
#: most payload bytes an outbox holds before it refuses more
DEFAULT_OUTBOX_MAX_BYTES = 64 * 1024 * 1024
#: seconds between flush attempts made from publish() while Redis is down (flush() always tries)
DEFAULT_OUTBOX_RETRY_INTERVAL = 1.0

#: event numbers reserved on disk at a time: one fsync per block, not per event published directly (a
#: restart skips what its predecessor left unused: numbers only need to increase)
SEQ_BLOCK = 100_000

# Errors that mean "the bus cannot take it now, try later" (BusError minus bad-event errors).
RETRYABLE = (redis.RedisError, BusError)

log = logging.getLogger(__name__)


class OutboxFull(BusError):
    """The outbox reached its bound; the event was not stored."""


class OutboxLocked(BusError):
    """Another process (or another Outbox object) has this outbox file open."""


class Outbox:
    """Append-only, ordered, fsync'd, bounded store of events waiting to be published."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_events: int = DEFAULT_OUTBOX_MAX_EVENTS,
        max_bytes: int = DEFAULT_OUTBOX_MAX_BYTES,
    ) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise OutboxLocked(f"outbox {self.path} is in use by another executor") from None
        self._mutex = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync on every commit: a crash loses nothing
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " event_id TEXT NOT NULL, payload BLOB NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        meta = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
        if not meta:  # a new file, or one from before numbering (its queued rows keep their numbers)
            meta = {"origin": uuid.uuid4().hex, "reserved": "0"}
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        #: this file's identity: its numbers mean nothing to another outbox (a new file starts again at 1)
        self.origin: str = meta["origin"]
        count, size, top = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), COALESCE(MAX(seq), 0) FROM outbox"
        ).fetchone()
        self._count, self._bytes = int(count), int(size)
        # Every number handed out is at most the reserved one, on disk before it is used: after a
        # restart numbering resumes above anything a previous run could have published.
        self._reserved = int(meta["reserved"])
        self._last_seq = max(self._reserved, int(top))

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def claim_seq(self) -> int:
        """The next event number: above every number handed out before, by this run or an earlier one."""
        with self._mutex:
            self._last_seq += 1
            if self._last_seq > self._reserved:
                self._reserved = self._last_seq + SEQ_BLOCK
                self._db.execute("UPDATE meta SET value = ? WHERE name = 'reserved'", (str(self._reserved),))
            return self._last_seq

    def append(self, event: TradeEvent, seq: int | None = None) -> None:
        """Store ``event`` durably after everything already queued, under ``seq`` (a number from
        ``claim_seq``, kept from a failed attempt) or a new number; OutboxFull past the bound."""
        payload = event.encode(max_bytes=None)
        if seq is None:
            seq = self.claim_seq()
        with self._mutex:
            if self._count + 1 > self.max_events or self._bytes + len(payload) > self.max_bytes:
                raise OutboxFull(
                    f"outbox {self.path} is full ({self._count}/{self.max_events} events, "
                    f"{self._bytes}/{self.max_bytes} bytes); event {event.event_id} "
                    f"({event.event_type.value} {event.symbol}) was not stored"
                )
            self._db.execute(
                "INSERT INTO outbox (seq, event_id, payload) VALUES (?, ?, ?)", (seq, event.event_id, payload)
            )
            self._count += 1
            self._bytes += len(payload)

    def peek(self, limit: int = 100) -> list[tuple[int, TradeEvent]]:
        """The oldest ``limit`` queued events as (seq, event), oldest first."""
        with self._mutex:
            rows = self._db.execute("SELECT seq, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [(int(seq), TradeEvent.from_json(payload)) for seq, payload in rows]

    def remove(self, seq: int) -> None:
        """Forget the event ``seq`` (it was published)."""
        self.remove_many((seq,))

    def remove_many(self, seqs: Iterable[int]) -> None:
        """Forget the events ``seqs`` (they were published), in one transaction."""
        removed = freed = 0
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for seq in seqs:
                    row = self._db.execute("SELECT LENGTH(payload) FROM outbox WHERE seq = ?", (seq,)).fetchone()
                    if row is not None:
                        self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                        removed, freed = removed + 1, freed + int(row[0])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count -= removed
            self._bytes -= freed

    def close(self) -> None:
        with self._mutex:
            if self._lock_fd < 0:
                return
            self._db.close()
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OutboxPublisher:
    """Publish through ``bus`` without ever raising on a bus failure, keeping order via ``outbox``.

    ``source`` names the numbering of ``outbox`` on the bus (one per executor): through a
    RedisEventBus each event is logged once however often it is resent (see the module doc)."""

    def __init__(
        self,
        bus: Any,
        outbox: Outbox,
        *,
        source: str = "executor",
        logger: logging.Logger | None = None,
        retry_interval: float = DEFAULT_OUTBOX_RETRY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.outbox = outbox
        self.log = logger or log
        self.retry_interval = retry_interval
        self._clock = clock
        self._next_try = 0.0
        self._lock = threading.RLock()  # one publisher path at a time: order is the contract
        # any other bus (anything with publish) gets each event at least once
        self._sequenced = (
            SequencedPublisher(bus.publisher, source, outbox.origin) if isinstance(bus, RedisEventBus) else None
        )
        self.published = 0
        self.queued = 0
        self.dropped = 0  # events refused by a full outbox (logged with their JSON) or invalid
        self.already_logged = 0  # resent events the bus had logged before (a crash or a lost reply)
        self.flushes = 0  # flushes that sent queued events (Prometheus: tradebus_outbox_flushes_total)
        self.flushed = 0  # queued events those flushes sent
        metrics.track_outbox(self)  # read on scrape only

    @property
    def pending(self) -> int:
        return len(self.outbox)

    @property
    def is_full(self) -> bool:
        return len(self.outbox) >= self.outbox.max_events or self.outbox.size_bytes >= self.outbox.max_bytes

    def publish(self, event: TradeEvent) -> Any:
        """Publish now if nothing is queued and the bus answers; else queue. Returns the receipt or None."""
        with self._lock:
            if len(self.outbox) and self._clock() >= self._next_try:
                self.flush()
            seq = None
            if not len(self.outbox):
                seq = self.outbox.claim_seq()  # kept if the event is queued: a resend is recognised
                try:
                    receipt = self._send([(seq, event)])[0]
                    self.published += 1
                    return receipt
                except EventValidationError as e:
                    self._drop(event, f"invalid event: {e}")
                    return None
                except RETRYABLE as e:
                    self.log.warning("bus publish failed (%s); queueing events in outbox %s", e, self.outbox.path)
                    self._next_try = self._clock() + self.retry_interval
            try:
                self.outbox.append(event, seq)
                self.queued += 1
            except OutboxFull as e:
                self._drop(event, str(e))
            return None

    def flush(self, batch: int = 100) -> int:
        """Send queued events oldest first (up to ``batch`` per round trip through a RedisEventBus); stop
        at the first failure. Returns how many left the outbox for the log (resends found logged too)."""
        sent = 0
        with self._lock:
            while len(self.outbox):
                rows = self.outbox.peek(batch if self._sequenced is not None else 1)
                if not rows:
                    break
                try:
                    sent += self._flush_rows(rows)
                except RETRYABLE as e:
                    self._next_try = self._clock() + self.retry_interval
                    self.log.info("outbox flush paused after %d events: %s", sent, e)
                    self._count_flush(sent)
                    return sent
                self.outbox.remove_many(seq for seq, _ in rows)
            if sent:
                self.log.info("outbox flushed %d events to the bus", sent)
            self._count_flush(sent)
        return sent

    def _count_flush(self, sent: int) -> None:
        if sent:
            self.flushes += 1
            self.flushed += sent

    def _flush_rows(self, rows: list[tuple[int, TradeEvent]]) -> int:
        """Publish ``rows``; the invalid ones are dropped. How many are in the log now."""
        try:
            receipts = self._send(rows)
        except EventValidationError as e:
            if len(rows) > 1:  # find the invalid one(s): one at a time (resends of the others are skipped)
                return sum(self._flush_rows([row]) for row in rows)
            self._drop(rows[0][1], f"invalid event: {e}")
            return 0
        again = sum(1 for r in receipts if getattr(r, "already_logged", False))
        if again:
            self.log.warning("outbox: %d resent event(s) were already in the log; not logged again", again)
        self.already_logged += again
        self.published += len(rows) - again
        return len(rows)

    def _send(self, rows: Sequence[tuple[int, TradeEvent]]) -> list[Any]:
        if self._sequenced is not None:
            return self._sequenced.publish(rows)
        return [self.bus.publish(event) for _, event in rows]

    def _drop(self, event: TradeEvent, why: str) -> None:
        self.dropped += 1
        self.log.critical("event NOT published and NOT stored: %s; event=%s", why, event.to_json())

    def close(self) -> None:
        self.outbox.close()
