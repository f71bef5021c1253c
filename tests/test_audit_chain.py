"""The audit hash chain: signed checkpoints, tamper detection by verify_audit, and writers that never wait.

Tampering is done the way a rogue superuser would: on an admin connection with
``session_replication_role = replica``, which switches off the append-only triggers. Each test puts the rows
back afterwards, because the control-plane database is shared by the whole run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections, transaction
from django.db.utils import DatabaseError
from django.test import override_settings

from audit.chain import extend_chain, verify_chain
from audit.models import AuditEvent, ChainLink, Checkpoint, EventKind
from audit.recorder import record
from identity.principal import Principal
from identity.roles import Role
from tests import environment
from tests.factories import make_user
from tests.tampering import chain_until_linked, put_back, saved, superuser, swap_links

PROJECT = Path(__file__).resolve().parent.parent


def events(count: int, summary: str = "chain test") -> list[AuditEvent]:
    principal = Principal(human=make_user(Role.ENGINEER))
    return [record(EventKind.TOKEN_ISSUED, principal=principal, summary=f"{summary} {n}") for n in range(count)]


@pytest.fixture
def chained() -> list[AuditEvent]:
    """Three fresh events, chained and checkpointed, with the chain verified before any tampering."""
    made = events(3)
    chain_until_linked(made)
    verdict = verify_chain()
    assert verdict.ok, verdict.problem
    return made


def link_of(event: AuditEvent) -> ChainLink:
    return ChainLink.objects.get(event_id=event.pk)


def assert_detected(fragment: str, event_id: int | None) -> None:
    verdict = verify_chain()
    assert not verdict.ok
    assert fragment in verdict.problem, verdict.problem
    if event_id is not None:
        assert verdict.event_id == event_id
    with pytest.raises(CommandError, match="audit chain FAILED") as raised:
        call_command("verify_audit", "--no-extend")
    assert raised.value.returncode == 1


def test_application_role_cannot_change_links_or_checkpoints(chained: list[AuditEvent]) -> None:
    for statement in (
        "UPDATE audit_chainlink SET row_hash = chain_hash WHERE event_id = %s",
        "DELETE FROM audit_chainlink WHERE event_id = %s",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as c:
            c.execute(statement, [chained[0].pk])
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as c:
        c.execute("DELETE FROM audit_checkpoint")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as c:
        c.execute("TRUNCATE audit_chainlink CASCADE")
    assert verify_chain().ok


def test_every_event_is_chained_once_with_a_signed_checkpoint_at_the_end() -> None:
    made = events(5)
    assert extend_chain() >= 5
    links = list(ChainLink.objects.filter(event_id__in=[e.pk for e in made]).order_by("seq"))
    assert [link.event_id for link in links] == [e.pk for e in made]  # one transaction each: txid order
    assert [link.seq for link in links] == list(range(links[0].seq, links[0].seq + 5))
    newest = ChainLink.objects.order_by("-seq").first()
    assert newest is not None and Checkpoint.objects.filter(seq=newest.seq).exists()
    assert extend_chain() == 0  # nothing new: no link, no checkpoint
    assert Checkpoint.objects.filter(seq__gt=newest.seq).count() == 0
    verdict = verify_chain()
    assert verdict.ok and verdict.links >= 5


def test_verify_audit_exits_zero_when_the_chain_holds(chained: list[AuditEvent]) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "verify_audit"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "audit chain OK" in result.stdout


def test_a_row_changed_by_a_superuser_is_detected(chained: list[AuditEvent]) -> None:
    victim = chained[1]
    with superuser() as admin:
        admin.execute("UPDATE audit_auditevent SET summary = 'nothing to see' WHERE id = %s", [victim.pk])
        try:
            assert_detected(f"event {victim.pk} ", victim.pk)
            assert "altered" in verify_chain().problem
            result = subprocess.run(
                [sys.executable, "manage.py", "verify_audit", "--no-extend"],
                cwd=PROJECT,
                capture_output=True,
                text=True,
                check=False,
                env=dict(os.environ),
                timeout=120,
            )
            assert result.returncode == 1
            assert f"event {victim.pk}" in result.stderr
        finally:
            admin.execute("UPDATE audit_auditevent SET summary = %s WHERE id = %s", [victim.summary, victim.pk])
    assert verify_chain().ok


def test_a_deleted_row_is_detected(chained: list[AuditEvent]) -> None:
    victim = chained[1]
    with superuser() as admin:
        copy = saved(admin, "audit_auditevent", "id = %s", [victim.pk])
        admin.execute("DELETE FROM audit_auditevent WHERE id = %s", [victim.pk])
        try:
            assert_detected("was deleted", victim.pk)
        finally:
            put_back(admin, "audit_auditevent", copy)
    assert verify_chain().ok


def test_a_deleted_row_and_its_link_are_detected(chained: list[AuditEvent]) -> None:
    victim = chained[1]
    with superuser() as admin:
        event_copy = saved(admin, "audit_auditevent", "id = %s", [victim.pk])
        link_copy = saved(admin, "audit_chainlink", "event_id = %s", [victim.pk])
        admin.execute("DELETE FROM audit_chainlink WHERE event_id = %s", [victim.pk])
        admin.execute("DELETE FROM audit_auditevent WHERE id = %s", [victim.pk])
        try:
            assert_detected("missing", chained[2].pk)
        finally:
            put_back(admin, "audit_auditevent", event_copy)
            put_back(admin, "audit_chainlink", link_copy)
    assert verify_chain().ok


def test_a_removed_link_alone_is_detected(chained: list[AuditEvent]) -> None:
    """The event is still there but out of the chain; renumbering the rest would break the signed values."""
    victim = chained[1]
    with superuser() as admin:
        link_copy = saved(admin, "audit_chainlink", "event_id = %s", [victim.pk])
        admin.execute("DELETE FROM audit_chainlink WHERE event_id = %s", [victim.pk])
        try:
            assert not verify_chain().ok
        finally:
            put_back(admin, "audit_chainlink", link_copy)
    assert verify_chain().ok


def test_a_reordered_pair_is_detected(chained: list[AuditEvent]) -> None:
    first, second = link_of(chained[0]), link_of(chained[1])

    with superuser() as admin:
        swap_links(admin, first.seq, second.seq)
        try:
            assert_detected("the chain breaks", chained[1].pk)
        finally:
            swap_links(admin, first.seq, second.seq)
    assert verify_chain().ok


def test_swapped_event_contents_are_detected(chained: list[AuditEvent]) -> None:
    """Reordering history by exchanging what two rows say, keeping ids and links in place."""
    one, two = chained[0], chained[1]
    with superuser() as admin:
        admin.execute(
            "UPDATE audit_auditevent SET summary = CASE id WHEN %s THEN %s ELSE %s END WHERE id IN (%s, %s)",
            [one.pk, two.summary, one.summary, one.pk, two.pk],
        )
        try:
            assert_detected(f"event {one.pk} ", one.pk)
        finally:
            admin.execute(
                "UPDATE audit_auditevent SET summary = CASE id WHEN %s THEN %s ELSE %s END WHERE id IN (%s, %s)",
                [one.pk, one.summary, two.summary, one.pk, two.pk],
            )
    assert verify_chain().ok


def test_a_truncated_tail_is_detected(chained: list[AuditEvent]) -> None:
    """Deleting the newest events and their links leaves a consistent chain, but the checkpoint signed the end."""
    ids = [e.pk for e in chained]
    newest = ChainLink.objects.order_by("-seq").first()
    assert newest is not None and newest.event_id == ids[-1]
    with superuser() as admin:
        event_copy = saved(admin, "audit_auditevent", "id = ANY(%s)", [ids])
        link_copy = saved(admin, "audit_chainlink", "event_id = ANY(%s)", [ids])
        admin.execute("DELETE FROM audit_chainlink WHERE event_id = ANY(%s)", [ids])
        admin.execute("DELETE FROM audit_auditevent WHERE id = ANY(%s)", [ids])
        try:
            assert_detected("removed from the tail", None)
        finally:
            put_back(admin, "audit_auditevent", event_copy)
            put_back(admin, "audit_chainlink", link_copy)
    assert verify_chain().ok


def test_a_recomputed_chain_without_the_key_is_detected(chained: list[AuditEvent]) -> None:
    """An attacker who rewrites a row *and* recomputes its link still cannot re-sign the checkpoint."""
    from audit.canonical import EVENT_SELECT, chain_hash, row_hash

    victim = link_of(chained[2])  # the newest: only its own link needs recomputing
    previous = ChainLink.objects.get(seq=victim.seq - 1)
    with superuser() as admin:
        event_copy = saved(admin, "audit_auditevent", "id = %s", [victim.event_id])
        link_copy = saved(admin, "audit_chainlink", "event_id = %s", [victim.event_id])
        admin.execute("UPDATE audit_auditevent SET summary = 'rewritten' WHERE id = %s", [victim.event_id])
        fields = admin.execute(f"SELECT {EVENT_SELECT} FROM audit_auditevent e WHERE e.id = %s", [victim.event_id])
        digest = row_hash(fields.fetchone())
        value = chain_hash(bytes(previous.chain_hash), digest)
        admin.execute(
            "UPDATE audit_chainlink SET row_hash = %s, chain_hash = %s WHERE seq = %s", [digest, value, victim.seq]
        )
        try:
            assert_detected("signed checkpoint", victim.event_id)
        finally:
            admin.execute("DELETE FROM audit_chainlink WHERE seq = %s", [victim.seq])
            admin.execute("DELETE FROM audit_auditevent WHERE id = %s", [victim.event_id])
            put_back(admin, "audit_auditevent", event_copy)
            put_back(admin, "audit_chainlink", link_copy)
    assert verify_chain().ok


def test_a_checkpoint_signed_with_another_key_is_refused(chained: list[AuditEvent]) -> None:
    from audit.signing import generate_key_hex

    with override_settings(AUDIT_SIGNING_KEY=generate_key_hex(), AUDIT_PUBLIC_KEY=None):
        assert "invalid signature" in verify_chain().problem
    assert verify_chain().ok


def test_an_event_still_uncommitted_holds_back_nothing_and_is_chained_once_it_commits() -> None:
    """A long transaction that records an event does not stall the chain (issue 15): a later transaction's event
    is chained at the next pass, the long one's at the first pass after it commits, and nothing is missed."""
    principal = Principal(human=make_user(Role.ENGINEER))
    started, release, done = threading.Event(), threading.Event(), threading.Event()
    early: list[int] = []

    def slow_writer() -> None:
        try:
            with transaction.atomic():
                early.append(record(EventKind.TOKEN_ISSUED, principal=principal, summary="early").pk)
                started.set()
                release.wait(30)
        finally:
            connections.close_all()
            done.set()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert started.wait(30)
    late = record(EventKind.TOKEN_ISSUED, principal=principal, summary="late")  # committed first
    extend_chain()
    late_link = ChainLink.objects.get(event_id=late.pk)
    assert Checkpoint.objects.filter(seq=late_link.seq).exists()
    assert not ChainLink.objects.filter(event_id=early[0]).exists()
    extend_chain()  # still running: looked at again, not lost
    release.set()
    assert done.wait(30)
    thread.join()
    extend_chain()
    assert ChainLink.objects.get(event_id=early[0]).seq > late_link.seq  # chained when it was seen committed
    assert verify_chain().ok


def test_writers_never_wait_for_a_sequencer() -> None:
    """A sequencer holding its lock (a long pass) does not delay an audited change."""
    principal = Principal(human=make_user(Role.ENGINEER))
    with psycopg.connect(environment.db_url(environment.CONTROL_DB)) as sequencer:
        from audit.chain import SEQUENCER_LOCK

        sequencer.execute("SELECT pg_advisory_xact_lock(%s)", [SEQUENCER_LOCK])
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = '5s'")  # a blocked insert would fail, not hang
            try:
                event = record(EventKind.TOKEN_ISSUED, principal=principal, summary="not blocked")
            finally:
                cursor.execute("RESET statement_timeout")
        assert AuditEvent.objects.filter(pk=event.pk).exists()
        sequencer.rollback()
    extend_chain()
    assert ChainLink.objects.filter(event_id=event.pk).exists()


def test_fifty_concurrent_writers_produce_a_chain_that_verifies() -> None:
    owner = make_user(Role.ENGINEER)
    principal = Principal(human=owner)
    barrier = threading.Barrier(51)
    failures: list[BaseException] = []
    written: list[int] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        try:
            barrier.wait(30)
            for i in range(20):
                with transaction.atomic():
                    event = record(EventKind.TOKEN_ISSUED, principal=principal, summary=f"writer {n} event {i}")
                with lock:
                    written.append(event.pk)
        except BaseException as exc:
            failures.append(exc)
        finally:
            connections.close_all()

    def sequencer() -> None:
        try:
            barrier.wait(30)
            while any(thread.is_alive() for thread in threads):
                extend_chain()
        except BaseException as exc:
            failures.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(50)]
    chainer = threading.Thread(target=sequencer)
    for thread in threads:
        thread.start()
    chainer.start()
    for thread in threads:
        thread.join(120)
    chainer.join(120)
    assert not failures, failures
    extend_chain()
    assert len(written) == 1000
    assert ChainLink.objects.filter(event_id__in=written).count() == 1000
    verdict = verify_chain()
    assert verdict.ok, verdict.problem
