"""The gateway's write-ahead audit journal: durable before release, shipped exactly once, fail closed."""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit import events
from audit import journal as journal_module
from audit.batch_writer import COLUMNS
from audit.events import SessionLines, StatementError, json_members, json_prefix
from audit.journal import AuditJournal, JournalUnavailable, _Slot, ship_leftovers
from audit.journal_format import (
    HEADER,
    copy_field,
    copy_fields,
    copy_line,
    frame,
    scan,
    segment_name,
    segment_number,
)
from audit.models import AuditEvent, EventKind, JournalCursor
from audit.recorder import Context, event_row
from identity.principal import Principal
from identity.roles import Role
from policy.patient_keys import PatientAccess
from tests.factories import make_user
from tests.services import wait_until

# ------------------------------------------------------------------------------------------- on-disk format


def test_copy_fields_escape_what_copy_text_format_treats_specially() -> None:
    assert copy_field(None) == "\\N"
    assert copy_field("a\tb\nc\\d\re") == "a\\tb\\nc\\\\d\\re"
    assert copy_field({"k": "v\n"}) == '{"k":"v\\\\n"}'  # JSON's own escape, then COPY's
    assert copy_field(7) == "7"
    assert copy_field("plain") == "plain"


def test_records_scan_back_whole() -> None:
    payloads = [b"one\n", b"two\n", b"x" * 5000 + b"\n"]
    data = b"".join(frame(p) for p in payloads) + b"\0" * 64
    assert [r.payload for r in scan(data)] == payloads
    ends = [r.end for r in scan(data)]
    assert [r.payload for r in scan(data, ends[0])] == payloads[1:]  # resume from a cursor


def test_a_torn_tail_ends_the_scan_at_the_last_whole_record() -> None:
    payloads = [b"first\n", b"second\n", b"third\n"]
    data = b"".join(frame(p) for p in payloads)
    whole = [len(frame(payloads[0])), len(frame(payloads[0])) + len(frame(payloads[1])), len(data)]
    for cut in range(len(data) + 1):  # the crash may have persisted any prefix
        expected = [p for p, end in zip(payloads, whole, strict=True) if end <= cut]
        assert [r.payload for r in scan(data[:cut] + b"\0" * 16)] == expected
        assert [r.payload for r in scan(data[:cut])] == expected


def test_a_bad_checksum_stops_the_scan_and_nothing_after_it_is_trusted() -> None:
    good, bad, later = frame(b"good\n"), bytearray(frame(b"flipped\n")), frame(b"later\n")
    bad[-2] ^= 0x01
    assert [r.payload for r in scan(good + bytes(bad) + later)] == [b"good\n"]


@given(st.binary(max_size=400), st.integers(min_value=0, max_value=400))
def test_scanning_arbitrary_bytes_never_raises(data: bytes, start: int) -> None:
    for record in scan(data, min(start, len(data))):
        length, checksum = HEADER.unpack_from(data, record.end - len(record.payload) - HEADER.size)
        assert length == len(record.payload) and checksum == zlib.crc32(record.payload)


def test_segment_names_round_trip_and_other_files_are_ignored() -> None:
    assert segment_number(segment_name(42)) == 42
    assert segment_number("journal-id") is None and segment_number("lock") is None
    assert segment_number("zz.seg") is None


def test_an_empty_record_cannot_be_framed() -> None:
    with pytest.raises(ValueError):
        frame(b"")


# ------------------------------------------------------------------------------------------- the journal


@pytest.fixture
def principal() -> Principal:
    return Principal(human=make_user(Role.ENGINEER))


def _row(principal: Principal, statement: str) -> dict[str, object]:
    return event_row(
        EventKind.QUERY_SUBMITTED,
        principal=principal,
        context=Context(front="wire", source_address="127.0.0.1", session_id="journal-test"),
        datasource="clinic",
        statement=statement,
        summary="allowed: provably read-only",
        details={"statement_id": statement, "tab\there": "line\nbreak"},
    )


def _submit_all(journal: AuditJournal, rows: list[dict[str, object]]) -> None:
    async def submit() -> None:
        futures = [journal.submit_row(row) for row in rows]
        await asyncio.gather(*(f for f in futures if f is not None))

    asyncio.run(submit())


def _events(marker: str) -> list[str]:
    return list(
        AuditEvent.objects.filter(statement__startswith=marker).order_by("id").values_list("statement", flat=True)
    )


@pytest.fixture
def journals(tmp_path: Path) -> Iterator[list[AuditJournal]]:
    opened: list[AuditJournal] = []
    yield opened
    for journal in opened:
        journal.close(timeout=5)


def test_a_record_is_durable_when_its_future_resolves_and_shipped_once(
    tmp_path: Path, principal: Principal, journals: list[AuditJournal]
) -> None:
    journal = AuditJournal(tmp_path)
    journals.append(journal)
    marker = f"durable-{principal.human.pk}"
    rows = [_row(principal, f"{marker} {i}") for i in range(20)]
    _submit_all(journal, rows)
    # Resolved means on disk: the segment holds all twenty, whatever the shipper has done so far.
    segment = (tmp_path / "slot-0" / segment_name(journal._number)).read_bytes()
    records = list(scan(segment))
    on_disk = [r.payload for r in records]
    assert [line.split(b"\t")[COLUMNS.index("statement")] for line in on_disk] == [
        f"{marker} {i}".encode() for i in range(20)
    ]
    wait_until(lambda: len(_events(marker)) == 20, 10, what="the journal to ship")
    event = AuditEvent.objects.get(statement=f"{marker} 3")
    assert event.details == {"statement_id": f"{marker} 3", "tab\there": "line\nbreak"}
    assert (event.actor_id, event.front, event.session_id) == (principal.human.pk, "wire", "journal-test")
    cursor = JournalCursor.objects.get(journal_id=journal.journal_id)
    assert (cursor.segment, cursor.position) == (journal._number, records[-1].end)  # moved with the rows


def test_after_a_crash_the_next_process_ships_what_was_left_exactly_once(
    tmp_path: Path, principal: Principal, journals: list[AuditJournal]
) -> None:
    marker = f"crash-{principal.human.pk}"
    crashed = AuditJournal(tmp_path, ship_interval=3600)  # durable but never shipped before the "crash"
    _submit_all(crashed, [_row(principal, f"{marker} {i}") for i in range(7)])
    assert _events(marker) == []
    os.close(crashed._slot.lock_fd)  # the process dies: its lock goes with it, its threads stay idle
    crashed._closing = True

    successor = AuditJournal(tmp_path)
    journals.append(successor)
    assert successor._slot.path == tmp_path / "slot-0" and successor.journal_id == crashed.journal_id
    assert _events(marker) == [f"{marker} {i}" for i in range(7)]
    _submit_all(successor, [_row(principal, f"{marker} after")])
    wait_until(lambda: len(_events(marker)) == 8, 10, what="the new record to ship")
    successor.close()
    journals.clear()

    again = AuditJournal(tmp_path)  # a third start finds nothing left to ship: no duplicates
    journals.append(again)
    assert len(_events(marker)) == 8


def test_leftovers_resume_from_the_shipped_cursor_and_stop_at_a_torn_tail(tmp_path: Path, principal: Principal) -> None:
    marker = f"cursor-{principal.human.pk}"
    slot = _Slot.try_lock(tmp_path / "slot-9")
    assert slot is not None
    lines = [copy_line(_row(principal, f"{marker} {i}"), COLUMNS) for i in range(5)]
    framed = [frame(line) for line in lines]
    torn = frame(copy_line(_row(principal, f"{marker} torn"), COLUMNS))[:-3]
    (slot.path / segment_name(4)).write_bytes(b"".join(framed) + torn + b"\0" * 100)
    JournalCursor.objects.create(journal_id=slot.journal_id, segment=4, position=len(framed[0]) + len(framed[1]))
    shipped, next_segment = ship_leftovers(slot, journal_module.control_plane_conninfo())
    slot.release()
    assert shipped == 3 and next_segment == 5
    assert _events(marker) == [f"{marker} {i}" for i in (2, 3, 4)]
    assert not list(slot.path.glob("*.seg"))


def test_two_processes_take_different_slots_and_a_free_slot_is_adopted(
    tmp_path: Path, principal: Principal, journals: list[AuditJournal]
) -> None:
    first = AuditJournal(tmp_path)
    second = AuditJournal(tmp_path)
    journals.extend([first, second])
    assert {first._slot.path.name, second._slot.path.name} == {"slot-0", "slot-1"}
    assert first.journal_id != second.journal_id

    marker = f"orphan-{principal.human.pk}"
    orphan = _Slot.try_lock(tmp_path / "slot-5")
    assert orphan is not None
    (orphan.path / segment_name(0)).write_bytes(frame(copy_line(_row(principal, f"{marker} left"), COLUMNS)))
    orphan.release()
    third = AuditJournal(tmp_path)
    journals.append(third)
    assert third._slot.path.name == "slot-2"
    assert _events(marker) == [f"{marker} left"]


def test_records_cross_segments_and_shipped_segments_are_removed(
    tmp_path: Path, principal: Principal, journals: list[AuditJournal]
) -> None:
    journal = AuditJournal(tmp_path, segment_size=4096)
    journals.append(journal)
    marker = f"rotate-{principal.human.pk}"
    rows = [_row(principal, f"{marker} {i:03d}") for i in range(60)]
    for start in range(0, 60, 6):
        _submit_all(journal, rows[start : start + 6])
    big = _row(principal, f"{marker} big " + "x" * 10_000)  # larger than a segment: gets one of its own
    _submit_all(journal, [big])
    assert journal._number >= 3  # several 4 kB segments, then one sized for the big record
    wait_until(lambda: len(_events(marker)) == 61, 10, what="every segment to ship")
    assert _events(marker)[:60] == [f"{marker} {i:03d}" for i in range(60)]
    wait_until(lambda: len(list((tmp_path / "slot-0").glob("*.seg"))) <= 2, 10, what="shipped segments removed")


def test_a_failed_fsync_fails_the_record_and_later_ones_until_a_fresh_segment_is_synced(
    tmp_path: Path, principal: Principal, journals: list[AuditJournal], monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = AuditJournal(tmp_path, ship_interval=3600)  # recovery runs only when the test wakes the shipper
    journals.append(journal)
    marker = f"fsyncgate-{principal.human.pk}"
    failed_segment = journal._number

    def broken_disk(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal_module.os, "fdatasync", broken_disk)
    with pytest.raises(JournalUnavailable, match="Input/output error"):
        _submit_all(journal, [_row(principal, f"{marker} never released")])
    monkeypatch.undo()
    with pytest.raises(JournalUnavailable, match="failed"):  # the disk is back, but nothing is trusted yet
        _submit_all(journal, [_row(principal, f"{marker} nor this")])
    assert journal.health()["status"] == "failed"
    journal._ship_wakeup.set()  # the shipper's next turn starts a fresh segment
    wait_until(lambda: journal.health()["status"] == "ok", 10, what="the journal to recover")
    assert journal._number > failed_segment  # the segment whose fsync failed is never written again
    _submit_all(journal, [_row(principal, f"{marker} after")])
    journal._ship_wakeup.set()
    # The record whose write failed is kept and written first: the attempt is on record. The refused one never
    # entered the journal (its submitter was told at once).
    wait_until(lambda: len(_events(marker)) == 2, 10, what="the kept and the new record to ship")
    assert _events(marker) == [f"{marker} never released", f"{marker} after"]


def test_when_shipping_falls_too_far_behind_new_records_are_refused_until_it_catches_up(
    tmp_path: Path, principal: Principal, journals: list[AuditJournal]
) -> None:
    journal = AuditJournal(tmp_path, max_lag_seconds=1)
    journals.append(journal)
    reachable = journal._conninfo
    journal._conninfo = "host=127.0.0.1 port=1 connect_timeout=1"  # the control plane goes away
    marker = f"lag-{principal.human.pk}"
    _submit_all(journal, [_row(principal, f"{marker} 0")])
    wait_until(lambda: journal.lag_seconds > 1.2, 10, what="the lag to exceed its bound")
    with pytest.raises(JournalUnavailable, match="behind"):
        _submit_all(journal, [_row(principal, f"{marker} refused")])
    journal._conninfo = reachable  # it comes back: the backlog ships and records are taken again
    wait_until(lambda: _events(marker) == [f"{marker} 0"], 15, what="the backlog to ship")
    _submit_all(journal, [_row(principal, f"{marker} 1")])
    wait_until(lambda: len(_events(marker)) == 2, 10, what="the next record")


def _same_but_time(fast: bytes, generic: bytes) -> None:
    assert fast.split(b"\t")[1:] == generic.split(b"\t")[1:]
    assert fast.count(b"\n") == 1  # one line, whatever the statement holds


def test_session_lines_match_the_event_constructors(principal: Principal) -> None:
    """The wire session's fast formatter writes exactly what the constructors in audit.events give as a line
    (but the time): one vocabulary, whichever writer."""
    context = Context(front="wire", source_address="10.1.2.3", session_id="s" * 32)
    lines = SessionLines(principal, context, "clinic")
    submitted = {"verdict": "allowed", "relations": ["public.patients"], "note": "tab\there \\ back"}
    sql = "SELECT 1\n-- two lines"
    _same_but_time(
        lines.submitted(sql, json_prefix(submitted), "x1"),
        events.submitted(
            principal, context, datasource="clinic", statement=sql, statement_id="x1", details=submitted
        ).line(),
    )
    masking = {"ssn": {"mask": "partial", "phi_type": "ssn"}}
    preview = {"columns": ["ssn"], "rows": [["***-**-1234"]]}
    _same_but_time(
        lines.executed(
            "x1",
            rowcount=1,
            masking_json=json_members(events.masking_details(masking)),
            result_sha256="ab",
            duration_ms=1.25,
            preview=preview,
        ),
        events.executed(
            principal,
            context,
            datasource="clinic",
            statement_id="x1",
            rowcount=1,
            truncated=False,
            masking=masking,
            result_sha256="ab",
            duration_ms=1.25,
            preview=preview,
        ).line(),
    )
    for patients in (
        PatientAccess(("public.patients",), {"id": "patient_id"}, ("patient_id:" + "0" * 32,), truncated=True),
        PatientAccess(("public.patients",)),
    ):
        _same_but_time(
            lines.executed(
                "x1",
                rowcount=1,
                masking_json=json_members(events.masking_details(masking)),
                result_sha256="ab",
                duration_ms=1.25,
                preview=preview,
                patients=patients,
            ),
            events.executed(
                principal,
                context,
                datasource="clinic",
                statement_id="x1",
                rowcount=1,
                truncated=False,
                masking=masking,
                result_sha256="ab",
                duration_ms=1.25,
                preview=preview,
                patients=patients,
            ).line(),
        )
    error = StatementError.scrubbed("22012", "division by zero", touches_phi=True)
    assert "division" not in error.message  # scrubbed: the statement touches PHI
    _same_but_time(
        lines.failed("x1", error),
        events.failed(principal, context, datasource="clinic", statement_id="x1", error=error).line(),
    )


def test_the_generic_row_and_line_are_the_same_values(principal: Principal) -> None:
    context = Context(front="http", session_id="s")
    row = event_row(EventKind.TOKEN_ISSUED, principal=principal, context=context, summary="x", details={"a": 1})
    line = copy_line(row, COLUMNS)
    assert (
        line.split(b"\t")[1:]
        == events.Event(EventKind.TOKEN_ISSUED, principal, context, summary="x", details={"a": 1})
        .line()
        .split(b"\t")[1:]
    )


@given(
    st.lists(
        st.one_of(
            st.none(), st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
        ),
        min_size=1,
        max_size=5,
    )
)
def test_copy_fields_read_back_what_copy_line_wrote(values: list[str | None]) -> None:
    columns = [f"c{index}" for index in range(len(values))]
    line = copy_line(dict(zip(columns, values, strict=True)), columns)
    assert copy_fields(line) == [None if value is None else value.encode() for value in values]
