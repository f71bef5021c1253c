"""The wire gateway's write-ahead audit journal: durable on local disk before a result leaves, then shipped.

Why: a statement's rows may reach the client only once its audit record is durable (non-negotiable 6). A commit
of the event table costs about 0.3 ms here (a WAL flush plus fourteen index entries), more than the read it
guards, and at most a few thousand of them fit in a second. An ``fdatasync`` of a pre-zeroed file costs about
0.11 ms and one covers every record written before it. So the gateway appends each record to a local journal,
releases the rows once the journal's fsync covers it, and ships journal records to the event table in large
COPY batches, a fraction of a second later.

The write and the fsync run in one writer thread (group commit): the event loop queues a record and wakes the
writer; the writer takes every record queued so far, writes them with one ``pwrite`` and one ``fdatasync``, and
hands the completion back to the loop (``call_soon_threadsafe``, one wake-up per group), which resolves the
records' futures. While one fsync runs, the loop keeps relaying every other session's traffic, and the records
submitted meanwhile form the next group. (The fsync used to run on the event loop itself, which stalled every
session for its whole duration: 68% of the gateway's busy time at one client in a profile, PR h7.) Records nobody
waits for (what a read returned) are written to the segment at once when nothing else is queued (a ``pwrite``
into the page cache, which outlives a killed process: a kill -9 right after a result no longer loses its record),
and synced after at most DEFER_SECONDS, or with the next urgent group.

When the writer is idle and the disk is fast (recent fsyncs under INLINE_SYNC_MAX_SECONDS on average), the event
loop writes the group itself instead, at the end of the loop turn that queued it (``_write_inline``): the two
thread hand-overs cost more than such a sync (at one client a record became durable ~450 µs after it was queued
through the writer, against a 225 µs fsync; docs/benchmarks.md), and the loop is held no longer than it takes
to relay a result. A slow disk never holds the loop: its syncs stay on the writer. While the writer is busy
with a group, new records form the next one and the writer takes it. Whoever writes holds ``_write_lock``, so
groups reach the disk in the order they were taken.

The writer must take the interpreter lock back to deliver each completion. Under load the event loop holds it,
and gives it up to a waiting thread only every ``sys.getswitchinterval()`` (5 ms by default), which would add up
to that to a statement's latency; the journal lowers the interval to SWITCH_INTERVAL_SECONDS while it is open.
The two thread wake-ups per group cost latency at one idle client (the loop no longer blocks, but a statement
waits for two hand-overs); at eight clients, and whenever the disk is slow, the loop keeps relaying instead.

Faults: any error writing or syncing (a full disk, an I/O error) fails the group's records and every later urgent
submission, so no row is released without a durable record. The journal then abandons the segment it was writing
(after a failed fsync its page cache cannot be trusted: PostgreSQL's "fsyncgate") and the shipper tries, every
ship interval, to start a fresh segment; once one is created and synced, writing resumes by itself. The records of
the failed group, and the deferred records submitted meanwhile, are kept (up to the unshipped cap) and written
first, so the attempts made during the fault are still on record. A segment that cannot be completed is
removed, never left half written.

Guarantees:

* **Durable first.** ``submit_line`` returns a future that completes only after the record's fsync returned. If the
  write or the fsync fails, the future fails and so does every later urgent submission until a fresh segment is
  synced (see Faults).
* **Shipped exactly once.** A batch is copied into ``audit_auditevent`` and the journal's cursor
  (``audit_journalcursor``) moves in the same transaction. A crash before the commit ships the batch again
  from the cursor; after it, the cursor already covers it.
* **Bounded lag.** If shipping falls ``AUDIT_JOURNAL_MAX_LAG_SECONDS`` behind (control plane unreachable), or
  the unshipped backlog exceeds its memory cap, submissions fail: the journal is a buffer, never a second log.
* **One writer per journal.** Each gateway process locks a ``slot-N`` directory (``flock``). At start it ships
  what an earlier process left in its slot, and in any other slot nobody holds, then writes to new segments:
  it never appends after a possibly torn tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import psycopg

from audit.batch_writer import COPY_SQL, control_plane_conninfo
from audit.events import COLUMNS
from audit.journal_format import HEADER_SIZE, copy_line, frame, scan, segment_name, segment_number
from audit.private_files import open_private, open_private_fd, private_directory

log = logging.getLogger(__name__)

SEGMENT_SIZE = 16 * 1024 * 1024
# Each shipped batch's commit flushes PostgreSQL's WAL, and on a shared disk a journal fsync that meets it waits:
# every 50 ms this put 2% of single-client statements above 1.5 ms; every 0.5 s, under 1% (docs/benchmarks.md).
SHIP_INTERVAL_SECONDS = 0.5
SHIP_BATCH_BYTES = 4 * 1024 * 1024
MAX_UNSHIPPED_BYTES = 256 * 1024 * 1024
DEFER_SECONDS = 0.05  # a record nobody waits for (what a read returned) may wait this long for company
INLINE_SYNC_MAX_SECONDS = 0.001  # fsyncs averaging more than this run on the writer only, never on the loop
SYNC_AVERAGE_WEIGHT = 0.2  # of the latest fsync in the moving average
SWITCH_INTERVAL_SECONDS = 0.0005  # how long the busy event loop may keep the writer's completion waiting
_CURSOR_SQL = (
    "INSERT INTO audit_journalcursor (journal_id, segment, position) VALUES (%s, %s, %s) "
    "ON CONFLICT (journal_id) DO UPDATE SET segment = EXCLUDED.segment, position = EXCLUDED.position, "
    "updated_at = now()"
)


class JournalUnavailable(Exception):
    """The journal cannot take records (a failed fsync, shipping too far behind, or closed): fail closed."""


class _Slot:
    """A locked ``slot-N`` directory and its journal id."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self.lock_fd = lock_fd
        id_file = path / "journal-id"
        if not id_file.exists():
            _write_durably(id_file, [secrets.token_hex(16).encode()])
        self.journal_id = id_file.read_text().strip()

    @classmethod
    def try_lock(cls, path: Path) -> _Slot | None:
        private_directory(path)  # segments hold statements and previews: 0700, files 0600 (audit.private_files)
        fd = open_private_fd(path / "lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(path, fd)

    def segments(self) -> list[int]:
        return sorted(n for n in (segment_number(p.name) for p in self.path.iterdir()) if n is not None)

    def release(self) -> None:
        os.close(self.lock_fd)


def _write_durably(path: Path, chunks: Iterable[bytes]) -> None:
    """The file appears whole and synced, or not at all: written beside it, synced, renamed, directory synced."""
    temporary = path.with_suffix(".new")
    try:
        with open_private(temporary, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a full disk must not be left fuller by a partial file
        raise
    _fsync_directory(path.parent)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_segment(path: Path, size: int) -> None:
    """A segment filled with zeros and synced, so later fsyncs flush data only, never file metadata."""
    chunk = b"\0" * (1 << 20)
    _write_durably(path, [chunk] * (size // len(chunk)) + [b"\0" * (size % len(chunk))])


def _ship(connection: psycopg.Connection[Any], journal_id: str, lines: Iterable[bytes], segment: int, end: int) -> None:
    """Copy records into the event table and move the journal's cursor past them, in one transaction: a crash
    before the commit leaves both as they were, so the records are shipped again; after it, never again."""
    with connection.transaction(), connection.cursor() as cursor:
        with cursor.copy(COPY_SQL) as copy:
            copy.write(b"".join(lines))
        cursor.execute(_CURSOR_SQL, (journal_id, segment, end))


def ship_leftovers(slot: _Slot, conninfo: str) -> tuple[int, int]:
    """Ship what an earlier process wrote in this slot and did not ship, then remove its segments.

    Returns how many events were shipped and the first segment number a new writer may use: numbers only grow
    within a journal, so the shipped cursor never points past a segment that still holds unshipped records."""
    with psycopg.connect(conninfo) as connection:
        row = connection.execute(
            "SELECT segment, position FROM audit_journalcursor WHERE journal_id = %s", (slot.journal_id,)
        ).fetchone()
        done_segment, done_position = (int(row[0]), int(row[1])) if row else (-1, 0)
        shipped = 0
        existing = slot.segments()
        for number in existing:
            if number < done_segment:
                continue
            data = (slot.path / segment_name(number)).read_bytes()
            records = list(scan(data, done_position if number == done_segment else 0))
            if records:
                _ship(connection, slot.journal_id, (record.payload for record in records), number, records[-1].end)
                shipped += len(records)
    for number in existing:
        (slot.path / segment_name(number)).unlink()
    _fsync_directory(slot.path)
    return shipped, max([done_segment, *existing]) + 1


class AuditJournal:
    """Group-fsynced local journal of audit events, shipped to the event table by a background thread."""

    def __init__(
        self,
        directory: str | Path,
        conninfo: str | None = None,
        *,
        max_lag_seconds: float = 30.0,
        segment_size: int = SEGMENT_SIZE,
        max_unshipped_bytes: int = MAX_UNSHIPPED_BYTES,
        ship_interval: float = SHIP_INTERVAL_SECONDS,
    ) -> None:
        self._conninfo = conninfo or control_plane_conninfo()
        self._segment_size = segment_size
        self._max_lag = max_lag_seconds
        self._max_unshipped = max_unshipped_bytes
        self._ship_interval = ship_interval
        root = Path(directory)
        self._slot = self._claim_slot(root)
        self.journal_id = self._slot.journal_id
        leftovers, first_segment = ship_leftovers(self._slot, self._conninfo)
        adopted = self._adopt_orphans(root)
        if leftovers or adopted:
            log.warning("audit journal: shipped %d events left by earlier gateway processes", leftovers + adopted)
        # Writing state, used only by the writer thread.
        self._number = first_segment
        self._segments: deque[int] = deque()
        self._spare_lock = threading.Lock()  # the writer rotates into the spare segment the shipper prepares
        self._spare: int | None = None
        self._fd, self._capacity = self._open_segment(self._new_segment(first_segment))
        self._offset = 0
        # Hand-over between the event loop and the writer.
        self._lock = threading.Condition()
        self._frames: list[bytes] = []
        self._lines: list[bytes] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._deferred_since: float | None = None
        self._writer_idle = False  # waiting on the condition: an urgent record must wake it
        self._write_lock = threading.Lock()  # held while a group is written and synced (writer or loop)
        self._inline_scheduled = False  # the loop writes the queued group at the end of its turn
        self._sync_seconds: float | None = None  # moving average of fsync times; None until one is measured
        self._failure: BaseException | None = None  # set by a failed write; cleared by a fresh segment
        self._kept: list[bytes] = []  # records not yet durable when writing failed: written first on recovery
        self._unsynced: list[tuple[bytes, int, int]] = []  # deferred records written, not yet synced (write lock)
        self._kept_bytes = 0
        self._dropped = 0  # records given up because too many were kept during a fault
        self._closing = False
        # Durable, not yet shipped: (COPY line, segment, end offset, monotonic time written).
        self._unshipped: deque[tuple[bytes, int, int, float]] = deque()
        self._unshipped_bytes = 0
        self._unshipped_lock = threading.Lock()
        self._ship_wakeup = threading.Event()
        self.events_written = 0
        self.events_shipped = 0
        self.fsyncs = 0
        _shorten_switch_interval()
        self._syncer = threading.Thread(target=self._sync_loop, name="audit-journal-write", daemon=True)
        self._shipper = threading.Thread(target=self._ship_loop, name="audit-journal-ship", daemon=True)
        self._syncer.start()
        self._shipper.start()

    # ------------------------------------------------------------------------------------------ submitting

    def submit_row(self, row: Mapping[str, Any], *, urgent: bool = True) -> asyncio.Future[None] | None:
        """``submit_line`` for an event given as column values (audit.recorder.event_row)."""
        return self.submit_line(copy_line(row, COLUMNS), urgent=urgent)

    def submit_line(self, line: bytes, *, urgent: bool = True) -> asyncio.Future[None] | None:
        """Append one event in COPY text form (called on the event loop). An urgent record returns a future that
        completes when the record is durable; a deferred one (written after the fact) returns None and rides
        along with the next write."""
        refusal = self._refusal()
        if refusal is not None:
            if not urgent:
                if self._failure is not None and not self._closing:
                    self._keep([line])  # written once the journal recovers
                else:
                    log.error("audit journal refused a deferred record: %s", refusal)
                return None
            refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            refused.set_exception(JournalUnavailable(refusal))
            return refused
        framed = frame(line)
        if not urgent:
            with self._lock:
                if self._deferred_since is None:
                    self._deferred_since = time.monotonic()  # the writer's timer syncs it
                # Nothing queued ahead of it and nobody writing: into the segment now, synced later. Otherwise
                # it joins the queue, which is written shortly anyway.
                if self._frames or self._inline_scheduled or not self._write_lock.acquire(blocking=False):
                    self._frames.append(framed)
                    self._lines.append(line)
                    return None
            try:
                self._write_unsynced(framed, line)
            finally:
                self._write_lock.release()
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._frames.append(framed)
            self._lines.append(line)
            self._waiters.append(future)
            # An idle writer and a fast disk: the loop writes this group itself once its turn's callbacks are
            # done. A slow disk: the writer does. A busy writer takes the group when done with the one it syncs.
            if self._writer_idle and not self._inline_scheduled:
                if self._disk_is_fast():
                    self._inline_scheduled = True
                    loop.call_soon(self._write_inline)
                else:
                    self._writer_idle = False
                    self._lock.notify()
        return future

    def _write_unsynced(self, framed: bytes, line: bytes) -> None:
        """Write one deferred record without syncing it (holding ``_write_lock``); the next sync covers it."""
        if self._failure is not None:
            self._keep([line])
            return
        try:
            ((number, end),) = self._write([framed])
        except OSError as exc:
            self._abandon_segment(exc)
            self._keep([line])
            return
        self._unsynced.append((line, number, end))

    def _disk_is_fast(self) -> bool:
        average = self._sync_seconds
        return average is not None and average < INLINE_SYNC_MAX_SECONDS

    def _write_inline(self) -> None:
        """Write and sync the queued group on the event loop (the writer was idle when it was queued)."""
        with self._lock:
            self._inline_scheduled = False
            if not self._waiters:
                return
            if not self._write_lock.acquire(blocking=False):  # the writer woke meanwhile: it takes the group
                self._writer_idle = False
                self._lock.notify()
                return
            frames, lines, waiters = self._take_group()
        try:
            error = self._persist(frames, lines)
        finally:
            self._write_lock.release()
        self._settle(waiters, error)

    def _refusal(self) -> str | None:
        if self._failure is not None:
            return f"the audit journal failed: {self._failure}"
        if self._closing:
            return "the audit journal is closed"
        if self.lag_seconds > self._max_lag:
            return f"the audit table is more than {self._max_lag:.0f} s behind the journal"
        if self._unshipped_bytes > self._max_unshipped:
            return "the audit journal's unshipped backlog is full"
        return None

    # ------------------------------------------------------------------------------------------ syncing

    def _sync_loop(self) -> None:
        """The writer: every record queued so far, written and synced as one group, completions to the loop."""
        while True:
            with self._lock:
                while not self._ready_to_write() or (self._inline_scheduled and not self._closing):
                    if self._closing and not self._frames and not self._unsynced:
                        return
                    self._writer_idle = True
                    self._lock.wait(self._wait_time())
                self._writer_idle = False
            with self._write_lock:  # taken before the group, so groups are written in the order taken
                with self._lock:
                    frames, lines, waiters = self._take_group()
                if frames or self._unsynced:
                    self._settle(waiters, self._persist(frames, lines))

    def _take_group(self) -> tuple[list[bytes], list[bytes], list[asyncio.Future[None]]]:
        """Everything queued so far (called holding ``_lock``)."""
        group = self._frames, self._lines, self._waiters
        self._frames, self._lines, self._waiters = [], [], []
        self._deferred_since = None
        return group

    def _persist(self, frames: list[bytes], lines: list[bytes]) -> JournalUnavailable | None:
        """Write and fsync (holding ``_write_lock``); the records become shippable. Returns the error to fail
        their waiters with."""
        unsynced, self._unsynced = self._unsynced, []
        if self._failure is not None:  # queued before the failure: kept for the recovery
            self._keep([entry[0] for entry in unsynced] + lines)
            return JournalUnavailable(f"the audit journal failed: {self._failure}")
        try:
            positions = self._write(frames) if frames else []
            started = time.monotonic()
            os.fdatasync(self._fd)
            took = time.monotonic() - started
        except OSError as exc:
            self._abandon_segment(exc)
            self._keep([entry[0] for entry in unsynced] + lines)
            return JournalUnavailable(f"the audit journal failed: {exc}")
        self.fsyncs += 1
        average = self._sync_seconds
        self._sync_seconds = took if average is None else average + SYNC_AVERAGE_WEIGHT * (took - average)
        self.events_written += len(frames) + len(unsynced)
        now = time.monotonic()
        with self._unshipped_lock:
            for line, number, end in unsynced:  # written before the group: shipped in that order
                self._unshipped.append((line, number, end, now))
                self._unshipped_bytes += len(line)
            for line, (number, end) in zip(lines, positions, strict=True):
                self._unshipped.append((line, number, end, now))
                self._unshipped_bytes += len(line)
        if self._unshipped_bytes >= SHIP_BATCH_BYTES:
            self._ship_wakeup.set()
        return None

    def _abandon_segment(self, error: OSError) -> None:
        """Stop writing to the current segment (holding ``_write_lock``): refuse until ``_recover`` succeeds."""
        log.critical("audit journal write failed; results are withheld until it recovers: %s", error)
        self._failure = error
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._offset, self._capacity = -1, 0, 0

    def _keep(self, lines: list[bytes]) -> None:
        """Hold records that could not be written, to write them first on recovery (within the unshipped cap)."""
        with self._unshipped_lock:
            for line in lines:
                if self._kept_bytes + len(line) > self._max_unshipped:
                    self._dropped += 1
                    continue
                self._kept.append(line)
                self._kept_bytes += len(line)

    def _recover(self) -> bool:
        """After a failed write: start a fresh, zeroed and synced segment, and write again (the shipper calls this
        every interval). Returns whether the journal is writing again."""
        with self._write_lock:
            if self._failure is None:
                return True
            number = self._number + 1
            try:
                path = self._new_segment(number)
                fd, capacity = self._open_segment(path)
            except OSError as exc:
                log.warning("audit journal still failing, results withheld: %s", exc)
                return False
            with self._spare_lock:
                self._spare = None
                self._number = number
            self._fd, self._capacity, self._offset = fd, capacity, 0
            with self._unshipped_lock:
                kept, self._kept, self._kept_bytes = self._kept, [], 0
                dropped, self._dropped = self._dropped, 0
            with self._lock:
                self._frames[:0] = [frame(line) for line in kept]
                self._lines[:0] = kept
                if kept and self._deferred_since is None:
                    self._deferred_since = time.monotonic()
                self._failure = None
                if kept and self._writer_idle:
                    self._writer_idle = False
                    self._lock.notify()
        log.warning(
            "audit journal recovered: writing segment %d; %d records kept through the fault, %d dropped",
            number,
            len(kept),
            dropped,
        )
        return True

    def health(self) -> dict[str, Any]:
        """The journal's state for a health endpoint: whether it is writing, and how far shipping lags."""
        failure = self._failure
        return {
            "status": "failed" if failure is not None else "ok",
            "error": None if failure is None else str(failure),
            "lag_seconds": round(self.lag_seconds, 3),
            "unshipped_bytes": self._unshipped_bytes,
            "kept_records": len(self._kept),
            "fsync_average_ms": None if self._sync_seconds is None else round(self._sync_seconds * 1000, 3),
        }

    def _ready_to_write(self) -> bool:
        if self._waiters or (self._closing and (self._frames or self._unsynced)):
            return True
        return self._deferred_since is not None and time.monotonic() - self._deferred_since >= DEFER_SECONDS

    def _wait_time(self) -> float:
        if self._deferred_since is None:
            return DEFER_SECONDS
        return max(0.0, DEFER_SECONDS - (time.monotonic() - self._deferred_since))

    @staticmethod
    def _settle(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
        """Complete the futures on their loop (the gateway has one; one wake-up per group, not per record)."""
        if not waiters:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None  # the writer thread
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for future in waiters:
            by_loop.setdefault(future.get_loop(), []).append(future)
        for loop, futures in by_loop.items():
            if loop is running:  # written inline: complete them now, on their own loop
                _complete(futures, error)
                continue
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting any more
                loop.call_soon_threadsafe(_complete, futures, error)

    def _write(self, frames: list[bytes]) -> list[tuple[int, int]]:
        """Write the frames at the current position, moving to a new segment when one is full."""
        positions: list[tuple[int, int]] = []
        data = b"".join(frames)
        if self._offset + len(data) <= self._capacity:
            os.pwrite(self._fd, data, self._offset)
            for framed in frames:
                self._offset += len(framed)
                positions.append((self._number, self._offset))
            return positions
        for framed in frames:
            if self._offset + len(framed) > self._capacity:
                os.fdatasync(self._fd)
                self._rotate(len(framed))
            os.pwrite(self._fd, framed, self._offset)
            self._offset += len(framed)
            positions.append((self._number, self._offset))
        return positions

    def _rotate(self, needed: int) -> None:
        os.close(self._fd)
        self._fd = -1
        number = self._number + 1
        with self._spare_lock:
            if self._spare == number and needed <= self._segment_size:
                path = self._slot.path / segment_name(number)
                self._segments.append(number)
            else:
                path = self._new_segment(number, max(self._segment_size, needed + HEADER_SIZE))
            self._spare = None
            self._number = number
        self._fd, self._capacity = self._open_segment(path)
        self._offset = 0
        self._ship_wakeup.set()  # the shipper prepares the next spare segment

    def _new_segment(self, number: int, size: int | None = None) -> Path:
        path = self._slot.path / segment_name(number)
        _create_segment(path, size or self._segment_size)
        self._segments.append(number)
        return path

    @staticmethod
    def _open_segment(path: Path) -> tuple[int, int]:
        fd = os.open(path, os.O_RDWR)
        return fd, os.fstat(fd).st_size

    # ------------------------------------------------------------------------------------------ shipping

    def _ship_loop(self) -> None:
        connection: psycopg.Connection[Any] | None = None
        backoff = self._ship_interval
        while True:
            self._ship_wakeup.wait(self._ship_interval)
            self._ship_wakeup.clear()
            closing = self._closing and not self._syncer.is_alive()
            if self._failure is not None and not closing:
                self._recover()
            try:
                self._prepare_spare()
            except OSError as exc:  # a full disk: the writer creates the segment itself when it needs one
                log.warning("audit journal: could not prepare the next segment: %s", exc)
            try:
                # One batch per interval, more only while batches come out full: shipping whatever arrived
                # during the previous COPY at once would turn into a stream of tiny transactions.
                full = True
                while self._unshipped and (full or closing):
                    connection, full = self._ship_batch(connection)
                    backoff = self._ship_interval
                self._remove_shipped_segments()
            except Exception as exc:
                log.error("audit journal: shipping to the event table failed, will retry: %s", exc)
                if connection is not None:
                    connection.close()
                connection = None
                if closing:
                    break
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if closing:
                break
        if connection is not None:
            connection.close()

    def _ship_batch(self, connection: psycopg.Connection[Any] | None) -> tuple[psycopg.Connection[Any], bool]:
        """Ship up to SHIP_BATCH_BYTES of the oldest records; says whether the batch was full."""
        if connection is None or connection.closed:
            connection = psycopg.connect(self._conninfo, application_name="phigate-audit-journal")
        batch: list[bytes] = []
        size = 0
        full = False
        with self._unshipped_lock:  # the syncer appends meanwhile; iterate a stable deque
            last = self._unshipped[0]
            for entry in self._unshipped:
                if batch and size + len(entry[0]) > SHIP_BATCH_BYTES:
                    full = True
                    break
                batch.append(entry[0])
                size += len(entry[0])
                last = entry
        _ship(connection, self.journal_id, batch, last[1], last[2])
        with self._unshipped_lock:
            for _ in batch:
                self._unshipped.popleft()
            self._unshipped_bytes -= size
        self.events_shipped += len(batch)
        return connection, full

    def _prepare_spare(self) -> None:
        """The next segment, zeroed ahead of time so a rotation does not stall the writer for ~50 ms."""
        with self._spare_lock:
            number = self._number + 1
            if self._spare != number and not self._closing:
                _create_segment(self._slot.path / segment_name(number), self._segment_size)
                self._spare = number

    def _remove_shipped_segments(self) -> None:
        """Segments before the one being written, all of whose records are shipped, are deleted."""
        oldest_needed = self._unshipped[0][1] if self._unshipped else self._number
        while self._segments and self._segments[0] < min(oldest_needed, self._number):
            (self._slot.path / segment_name(self._segments.popleft())).unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ life cycle

    @staticmethod
    def _claim_slot(root: Path) -> _Slot:
        private_directory(root)
        for index in range(1024):
            slot = _Slot.try_lock(root / f"slot-{index}")
            if slot is not None:
                return slot
        raise JournalUnavailable(f"no free journal slot under {root}")

    def _adopt_orphans(self, root: Path) -> int:
        """Ship the leftovers of slots no running process holds (a gateway that crashed and did not return)."""
        shipped = 0
        for path in sorted(root.glob("slot-*")):
            if path == self._slot.path:
                continue
            orphan = _Slot.try_lock(path)
            if orphan is None:
                continue
            try:
                shipped += ship_leftovers(orphan, self._conninfo)[0]
            finally:
                orphan.release()
        return shipped

    @property
    def lag_seconds(self) -> float:
        """How long the oldest unshipped record has waited (0 when everything is shipped)."""
        try:
            oldest = self._unshipped[0][3]
        except IndexError:  # nothing unshipped (the shipper may have taken the last one just now)
            return 0.0
        return time.monotonic() - oldest

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, ship what is durable (within ``timeout``), and release the slot."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._syncer.join(timeout)
        self._ship_wakeup.set()
        self._shipper.join(timeout)
        if self._unshipped:
            log.warning("audit journal closed, %d events unshipped; the next start ships them", len(self._unshipped))
        else:
            self._remove_shipped_segments()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._slot.release()
        _restore_switch_interval()


_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


def _shorten_switch_interval() -> None:
    """While any journal is open, a thread waiting for the interpreter lock gets it within
    SWITCH_INTERVAL_SECONDS (the writer delivering a completion to a busy event loop)."""
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved, SWITCH_INTERVAL_SECONDS))
        _switch_users += 1


def _restore_switch_interval() -> None:
    global _switch_users
    with _switch_lock:
        _switch_users -= 1
        if _switch_users == 0:
            sys.setswitchinterval(_switch_saved)


def _complete(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in waiters:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
