"""The journal's fsync runs off the event loop: sessions keep being served while one runs (PR h7).

A slow disk is stood in for at the OS-call boundary: ``os.fdatasync`` sleeps (releasing the interpreter lock, as
the real call does) before it syncs. With the fsync on the event loop, every loop turn that submitted a record
stalled for the whole sync, and every other session with it.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit import journal as journal_module
from audit.batch_writer import COLUMNS
from audit.journal import AuditJournal
from audit.journal_format import copy_line, scan, segment_name
from audit.models import EventKind
from audit.recorder import Context, event_row
from identity.principal import Principal
from identity.roles import Role
from tests.factories import make_user

SLOW_FSYNC = 0.03


class SlowDisk:
    """``os.fdatasync`` that takes SLOW_FSYNC longer; counts syncs begun and the last one completed."""

    def __init__(self) -> None:
        self.real = os.fdatasync
        self.begun = 0
        self.completed = 0  # the number (1-based, by start) of the latest sync that returned
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self.lock:
            self.begun += 1
            number = self.begun
        time.sleep(SLOW_FSYNC)
        self.real(fd)
        with self.lock:
            self.completed = max(self.completed, number)


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> SlowDisk:
    disk = SlowDisk()
    monkeypatch.setattr(journal_module.os, "fdatasync", disk)
    return disk


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[AuditJournal]:
    opened = AuditJournal(tmp_path)
    yield opened
    opened.close(timeout=5)


def _line(principal: Principal, statement: str) -> bytes:
    row = event_row(
        EventKind.QUERY_SUBMITTED,
        principal=principal,
        context=Context(front="wire", source_address="127.0.0.1", session_id="journal-writer-test"),
        datasource="clinic",
        statement=statement,
        summary="allowed: provably read-only",
        details={"statement_id": statement},
    )
    return copy_line(row, COLUMNS)


def test_the_event_loop_keeps_serving_while_an_fsync_runs(journal: AuditJournal, slow_disk: SlowDisk) -> None:
    principal = Principal(human=make_user(Role.ENGINEER))
    released_early: list[str] = []

    async def session(name: str, statements: int) -> None:
        """One statement after another, each waiting for its record, as a session's rows do."""
        for index in range(statements):
            statement = f"{name} {index}"
            begun_before = slow_disk.begun
            await journal.submit_line(_line(principal, statement))  # type: ignore[misc]
            if slow_disk.completed <= begun_before:  # no sync that began after the submission has returned
                released_early.append(statement)

    async def ticker(gaps: list[float], stop: asyncio.Event) -> None:
        """Another session's work: a short timer, again and again; records how late each one fires."""
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.002)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async def main() -> list[float]:
        gaps: list[float] = []
        stop = asyncio.Event()
        ticking = asyncio.create_task(ticker(gaps, stop))
        await asyncio.gather(*(session(f"writer-{n}", 10) for n in range(4)))
        stop.set()
        await ticking
        return gaps

    gaps = asyncio.run(main())
    assert not released_early, f"released before a covering fsync returned: {released_early}"
    # About 10 groups of SLOW_FSYNC each: the ticker fires every few milliseconds throughout. With the fsync on
    # the loop it fired once per fsync at best (median gap >= SLOW_FSYNC).
    assert len(gaps) >= 40, f"the loop served the ticker only {len(gaps)} times"
    assert statistics.median(gaps) < SLOW_FSYNC / 2, f"median timer gap {statistics.median(gaps) * 1000:.1f} ms"
    # Group commit: records submitted while a sync runs share the next one.
    assert slow_disk.begun <= 30, f"{slow_disk.begun} fsyncs for 40 records from 4 sessions"


def test_records_queued_during_an_fsync_are_committed_together_and_in_order(
    tmp_path: Path, journal: AuditJournal, slow_disk: SlowDisk
) -> None:
    principal = Principal(human=make_user(Role.ENGINEER))

    async def main() -> None:
        first = journal.submit_line(_line(principal, "group 0"))
        await asyncio.sleep(SLOW_FSYNC / 3)  # the writer is inside the first (slow) fsync now
        rest = [journal.submit_line(_line(principal, f"group {n}")) for n in range(1, 50)]
        await asyncio.gather(first, *rest)  # type: ignore[arg-type]

    asyncio.run(main())
    assert slow_disk.begun == 2  # one for the first record, one for the 49 queued while it ran
    segment = (tmp_path / "slot-0" / segment_name(journal._number)).read_bytes()
    statements = [r.payload.split(b"\t")[COLUMNS.index("statement")] for r in scan(segment)]
    assert statements == [f"group {n}".encode() for n in range(50)]


def test_a_deferred_record_is_written_by_the_writer_without_an_urgent_one(journal: AuditJournal) -> None:
    principal = Principal(human=make_user(Role.ENGINEER))

    async def main() -> None:
        assert journal.submit_line(_line(principal, "deferred"), urgent=False) is None

    asyncio.run(main())
    deadline = time.monotonic() + 5
    while journal.events_written < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert journal.events_written == 1


class CountingDisk:
    """The real ``os.fdatasync``, plus a delay when set; records which thread ran each sync."""

    def __init__(self) -> None:
        self.real = os.fdatasync
        self.delay = 0.0
        self.threads: list[int] = []
        self.completed = 0

    def __call__(self, fd: int) -> None:
        self.threads.append(threading.get_ident())
        if self.delay:
            time.sleep(self.delay)
        self.real(fd)
        self.completed += 1


def test_on_a_fast_disk_the_loop_syncs_idle_groups_itself_and_still_releases_only_after_the_sync(
    journal: AuditJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One session at a time: the writer thread's two hand-overs cost more than a fast fsync, so the loop writes
    the group itself (at the end of its turn), and a record still completes only once a sync covering it has."""
    disk = CountingDisk()
    monkeypatch.setattr(journal_module.os, "fdatasync", disk)
    monkeypatch.setattr(journal_module, "INLINE_SYNC_MAX_SECONDS", 1.0)  # this machine's disk counts as fast
    principal = Principal(human=make_user(Role.ENGINEER))
    early: list[int] = []

    async def main() -> int:
        for index in range(20):
            before = disk.completed
            await journal.submit_line(_line(principal, f"one at a time {index}"))  # type: ignore[misc]
            if disk.completed <= before:
                early.append(index)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert not early, f"released before a covering fsync returned: {early}"
    # The first sync has no measured disk speed yet and goes to the writer; once the disk is known to be fast,
    # the loop's own thread syncs.
    assert disk.threads[0] != loop_thread
    assert disk.threads[-10:] == [loop_thread] * 10, "groups were still handed to the writer thread"


def test_a_disk_that_turns_slow_moves_the_syncs_back_to_the_writer(
    journal: AuditJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop is never held by a slow disk: once syncs average more than INLINE_SYNC_MAX_SECONDS, the writer
    thread takes them again and the loop keeps serving meanwhile."""
    disk = CountingDisk()
    monkeypatch.setattr(journal_module.os, "fdatasync", disk)
    monkeypatch.setattr(journal_module, "INLINE_SYNC_MAX_SECONDS", SLOW_FSYNC / 3)  # real syncs: fast; delayed: slow
    principal = Principal(human=make_user(Role.ENGINEER))

    async def main() -> tuple[int, list[float]]:
        for index in range(5):
            await journal.submit_line(_line(principal, f"fast {index}"))  # type: ignore[misc]
        disk.delay = SLOW_FSYNC
        gaps: list[float] = []
        for index in range(10):
            last = time.monotonic()
            waiting = asyncio.ensure_future(journal.submit_line(_line(principal, f"slow {index}")))  # type: ignore[arg-type]
            while not waiting.done():  # another session's short timer, while this record waits for its sync
                await asyncio.sleep(0.002)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()
        return threading.get_ident(), gaps

    loop_thread, gaps = asyncio.run(main())
    assert loop_thread in disk.threads[:5]
    # The first slow sync may still run inline (the average was fast); a few later, the writer has them all.
    assert disk.threads[-5:] == [disk.threads[0]] * 5 and disk.threads[0] != loop_thread
    assert statistics.median(gaps) < SLOW_FSYNC / 2, f"median timer gap {statistics.median(gaps) * 1000:.1f} ms"
