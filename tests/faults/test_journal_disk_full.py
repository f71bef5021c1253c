"""The audit journal on a disk that fills up and is freed again: a real tmpfs, really full (issue 15).

Seen before: an ENOSPC while preparing the next segment killed the shipping thread silently; any write error
was permanent, so freeing space did nothing; a partial ``.new`` segment was left behind. Now: no record is
reported durable that is not, the journal refuses while the disk is full, leaves no partial file, and writes
again by itself once there is room, with the records of the fault kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.batch_writer import COLUMNS
from audit.journal import AuditJournal, JournalUnavailable
from audit.journal_format import copy_line
from audit.models import AuditEvent, EventKind
from audit.recorder import Context, event_row
from identity.principal import Principal
from identity.roles import Role
from tests.factories import make_user
from tests.services import wait_until

pytestmark = pytest.mark.timeout(120)

SEGMENT = 256 * 1024
DISK = 2 * 1024 * 1024


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, mounted for this test and unmounted after it, whatever happens."""
    mount_point = tmp_path / "tiny-disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk: Path) -> Path:
    """Take every free byte of the disk with one file."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for size in (65536, 512):  # then what a 64 KiB write could not take
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\xff" * size)
    return filler


def _line(principal: Principal, statement: str) -> bytes:
    row = event_row(
        EventKind.QUERY_SUBMITTED,
        principal=principal,
        context=Context(front="wire", source_address="127.0.0.1", session_id="disk-full-test"),
        datasource="clinic",
        statement=statement,
        summary="allowed: provably read-only",
        details={"statement_id": statement, "padding": "p" * 2000},
    )
    return copy_line(row, COLUMNS)


def _events(marker: str) -> list[str]:
    return list(
        AuditEvent.objects.filter(statement__startswith=marker).order_by("id").values_list("statement", flat=True)
    )


def test_a_full_disk_withholds_results_and_the_journal_writes_again_once_space_is_freed(tiny_disk: Path) -> None:
    principal = Principal(human=make_user(Role.ENGINEER))
    marker = f"disk-full-{principal.human.pk}"
    journal = AuditJournal(tiny_disk, segment_size=SEGMENT, ship_interval=0.2)
    try:
        filler = _fill(tiny_disk)
        durable: list[str] = []
        refused: list[str] = []

        async def write_until_refused() -> None:
            """One record at a time, as sessions' rows wait for them, until the journal needs a new segment."""
            for index in range(1000):
                statement = f"{marker} {index:04d}"
                try:
                    await journal.submit_line(_line(principal, statement))  # type: ignore[misc]
                except JournalUnavailable:
                    refused.append(statement)
                    if len(refused) == 3:
                        return
                else:
                    durable.append(statement)
                if index % 40 == 39:
                    journal.submit_line(_line(principal, f"{marker} deferred {index:04d}"), urgent=False)

        asyncio.run(write_until_refused())
        assert durable and len(refused) == 3, "the disk never filled up"
        assert journal.health()["status"] == "failed"
        assert "No space left on device" in str(journal.health()["error"])
        # No partial segment is left taking the little room there is.
        assert not list(tiny_disk.rglob("*.new"))
        # Everything reported durable ships, while the disk is still full (the shipper is alive).
        wait_until(lambda: set(durable) <= set(_events(marker)), 20, what="the durable records to ship")
        # Still full: the shipper's attempts to start a segment fail and leave nothing behind.
        asyncio.run(asyncio.sleep(1.0))
        assert journal.health()["status"] == "failed"
        assert not list(tiny_disk.rglob("*.new"))

        os.unlink(filler)  # space again: no restart, the journal starts a fresh segment by itself
        wait_until(lambda: journal.health()["status"] == "ok", 20, what="the journal to recover")

        async def one_more() -> None:
            await journal.submit_line(_line(principal, f"{marker} after"))  # type: ignore[misc]

        asyncio.run(one_more())
        shipped = wait_until(lambda: f"{marker} after" in _events(marker) and _events(marker), 20, what="shipping")
        # The record whose write hit the full disk was kept and written first: the attempt is on record, once.
        assert refused[0] in shipped
        assert len(shipped) == len(set(shipped)), "a record was shipped twice"
        assert set(durable) <= set(shipped)
    finally:
        journal.close(timeout=10)
