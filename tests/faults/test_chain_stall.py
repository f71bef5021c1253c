"""An agent holding a transaction open cannot freeze the audit chain, and a stalled chain is reported (issue 15).

Seen before: a wire client's ``BEGIN; SELECT txid_current();`` held open through the gateway pinned the oldest
running transaction of the whole cluster, below which the sequencer chained events; new events stayed unchained
and unsigned for as long as the agent liked, and an event deleted meanwhile (as the control-plane owner) was
never reported by ``verify_audit``. Now each pass chains every event committed since the last one, whatever
still runs anywhere; and ``verify_audit`` fails when the sequencer itself has not passed for longer than the
bound while events were written, naming what waits unchained and the ids that are gone.

Real processes: the session's gateway (the agent's upstream transaction is a real one in the target database
on this same cluster), Celery beat driving the session's worker, ``verify_audit`` as an operator runs it.
Tampering is done as a rogue superuser would (tests/tampering.py), and put back: the database is shared.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.chain import SEQUENCER_LOCK, extend_chain, verify_chain
from audit.models import AuditEvent, ChainLink, Checkpoint, EventKind
from audit.recorder import record
from identity.principal import Principal
from identity.roles import Role
from tests import environment
from tests import services as svc
from tests.factories import make_agent, make_user
from tests.services import wait_until
from tests.tampering import put_back, saved, superuser

pytestmark = pytest.mark.timeout(180)

PROJECT = Path(__file__).resolve().parents[2]


def _agent_dsn(port: int) -> tuple[str, str]:
    agent, token = make_agent(make_user(Role.ENGINEER))
    return f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{port}/clinic", agent.name


@contextmanager
def held_transaction(services) -> Iterator[int]:  # type: ignore[no-untyped-def]
    """An agent's ``BEGIN; SELECT txid_current();`` through the gateway, held open; yields the transaction id.

    Checks the premise first: the agent's upstream backend holds that id, and it is the oldest transaction
    running on the cluster as the control plane sees it, i.e. what the old sequencer waited for.
    """
    dsn, agent_name = _agent_dsn(services.gateway_port)
    with psycopg.connect(dsn) as wire:  # not autocommit: the first statement opens the transaction
        held = int(wire.execute("SELECT txid_current()").fetchone()[0])
        with psycopg.connect(services.target.owner_url, autocommit=True) as owner:
            upstream = owner.execute(
                "SELECT backend_xid::text::bigint FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE %s AND backend_xid IS NOT NULL",
                [f"phigate-wire/{agent_name}%"],
            ).fetchall()
        assert [row[0] for row in upstream] == [held % 2**32], "the agent's upstream should hold its txid"
        with psycopg.connect(environment.db_url(environment.CONTROL_DB), autocommit=True) as control:
            horizon = control.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetchone()[0]
        assert horizon <= held, "the agent's transaction should pin the cluster's horizon"
        try:
            yield held
        finally:
            wire.rollback()


def _events(count: int, summary: str) -> list[AuditEvent]:
    principal = Principal(human=make_user(Role.ENGINEER))
    return [record(EventKind.TOKEN_ISSUED, principal=principal, summary=f"{summary} {n}") for n in range(count)]


def _wire_read(services, marker: str) -> None:  # type: ignore[no-untyped-def]
    """Another agent's read, whose records travel through the gateway's journal and shipper."""
    dsn, _ = _agent_dsn(services.gateway_port)
    with psycopg.connect(dsn, autocommit=True) as wire:
        wire.execute(f"SELECT count(*) AS {marker} FROM prescriptions").fetchall()


def _verify(*options: str) -> str:
    """``verify_audit``; returns its failure message, or "" when the chain verifies."""
    try:
        call_command("verify_audit", *options)
    except CommandError as failure:
        assert failure.returncode == 1
        return str(failure)
    return ""


def test_an_agent_holding_a_transaction_open_does_not_stall_chaining(services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Events written meanwhile, by the web side and through the gateway's journal, are chained and signed by
    the beat within its normal interval."""
    interval = settings.AUDIT_CHAIN_INTERVAL_SECONDS
    beat = svc.Service(
        "beat",
        [sys.executable, "-m", "celery", "-A", "phigate", "beat", "-s", str(tmp_path / "beat-schedule")],
        {},
        tmp_path,
    ).start()
    try:
        with held_transaction(services):
            marker = f"stall_{time.monotonic_ns()}"
            written = _events(3, marker)
            _wire_read(services, marker)
            wire_events = wait_until(
                lambda: list(AuditEvent.objects.filter(statement__contains=marker).values_list("pk", flat=True)),
                30,
                what="the wire read's records to be shipped",
            )
            ids = {event.pk for event in written} | set(wire_events)
            since = time.monotonic()

            def chained_and_signed() -> bool:
                assert beat.alive(), beat.log_tail()
                links = list(ChainLink.objects.filter(event_id__in=ids).values_list("seq", flat=True))
                return len(links) == len(ids) and Checkpoint.objects.filter(seq__gte=max(links)).exists()

            # One interval for the beat's first tick after it started, one for the pass, one of slack.
            wait_until(chained_and_signed, 3 * interval + 10, interval=0.2, what="chaining while the agent waits")
            assert time.monotonic() - since <= 3 * interval + 10
            assert _verify("--no-extend") == ""
    finally:
        beat.stop()


def test_an_event_deleted_while_an_agent_holds_a_transaction_open_is_reported(services) -> None:  # type: ignore[no-untyped-def]
    with held_transaction(services):
        written = _events(3, "deleted while held")
        extend_chain()  # the beat's next pass
        victim = written[1]
        with superuser() as admin:
            copy = saved(admin, "audit_auditevent", "id = %s", [victim.pk])
            admin.execute("DELETE FROM audit_auditevent WHERE id = %s", [victim.pk])
            try:
                problem = _verify()
                assert f"event {victim.pk} (seq " in problem and "was deleted" in problem, problem
            finally:
                put_back(admin, "audit_auditevent", copy)
    assert verify_chain().ok


@contextmanager
def stalled_sequencer() -> Iterator[None]:
    """A sequencer that hangs holding the chain's lock: the one stall left to a process that is not the agent."""
    with psycopg.connect(environment.db_url(environment.CONTROL_DB)) as hung:
        hung.execute("SELECT pg_advisory_xact_lock(%s)", [SEQUENCER_LOCK])
        try:
            yield
        finally:
            hung.rollback()


def test_a_deletion_while_the_sequencer_is_stalled_is_reported_past_the_bound() -> None:
    bound = 2.0
    extend_chain()
    with stalled_sequencer(), superuser() as admin:
        written = _events(3, "deleted while stalled")
        ids = [event.pk for event in written]
        copy = saved(admin, "audit_auditevent", "id = ANY(%s)", [ids])
        try:
            admin.execute("DELETE FROM audit_auditevent WHERE id = %s", [ids[1]])
            within = _verify("--unchained-bound", "60", "--lock-wait", "0.5")
            assert within == "", within  # a few seconds unchained is the normal window, not a failure
            time.sleep(bound + 0.5)
            problem = _verify("--unchained-bound", str(bound), "--lock-wait", "0.5")
            assert "events are left unchained" in problem, problem
            assert _waiting(problem) >= 2 and _oldest(problem) <= ids[0], problem  # ours, and any shipped late
            assert _absent(problem) >= 1, problem  # the deleted id is counted as gone

            # Deleting all that waited leaves nothing of ours unchained to see: the ids handed out still tell.
            admin.execute("DELETE FROM audit_auditevent WHERE id = ANY(%s)", [ids])
            problem = _verify("--unchained-bound", str(bound), "--lock-wait", "0.5")
            assert "events are left unchained" in problem and _absent(problem) >= 3, problem

            # Done as an operator does: a separate process, its exit status and its message.
            result = subprocess.run(
                [sys.executable, "manage.py", "verify_audit", "--unchained-bound", str(bound), "--lock-wait", "0.5"],
                cwd=PROJECT,
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
            assert result.returncode == 1 and "events are left unchained" in result.stderr, result.stderr
        finally:
            admin.execute("DELETE FROM audit_auditevent WHERE id = ANY(%s)", [ids])
            put_back(admin, "audit_auditevent", copy)
    extend_chain()
    assert ChainLink.objects.filter(event_id__in=ids).count() == 3
    verdict = verify_chain(unchained_bound=bound)
    assert verdict.ok, verdict.problem


def test_a_sequencer_cursor_rewritten_to_look_recent_is_refused() -> None:
    """Hiding a stall means making the last pass look recent: the cursor is signed, so that is detected."""
    extend_chain()
    with superuser() as admin:
        copy = saved(admin, "audit_chaincursor", "id = 1", [])
        admin.execute("UPDATE audit_chaincursor SET passed_at = '2999-01-01T00:00:00.000000Z' WHERE id = 1")
        try:
            assert "does not match its signature" in _verify("--no-extend")
        finally:
            admin.execute("DELETE FROM audit_chaincursor")
            put_back(admin, "audit_chaincursor", copy)
    assert verify_chain().ok


def _number(pattern: str, problem: str) -> int:
    found = re.search(pattern, problem)
    assert found, problem
    return int(found.group(1))


def _absent(problem: str) -> int:
    return _number(r"(\d+) of those are not in the table", problem)


def _waiting(problem: str) -> int:
    return _number(r"(\d+) events wait unchained", problem)


def _oldest(problem: str) -> int:
    return _number(r"oldest: event (\d+)", problem)


def test_a_link_cut_from_the_tail_with_its_checkpoint_is_reported() -> None:
    """The chain and its signatures are consistent again after the newest link and its checkpoint go; the
    sequencer's signed cursor still says it passed that event, so it is reported."""
    written = _events(1, "cut from the tail")
    extend_chain()
    link = ChainLink.objects.get(event_id=written[0].pk)
    assert not ChainLink.objects.filter(seq__gt=link.seq).exists()
    with superuser() as admin:
        link_copy = saved(admin, "audit_chainlink", "seq = %s", [link.seq])
        checkpoint_copy = saved(admin, "audit_checkpoint", "seq = %s", [link.seq])
        admin.execute("DELETE FROM audit_checkpoint WHERE seq = %s", [link.seq])
        admin.execute("DELETE FROM audit_chainlink WHERE seq = %s", [link.seq])
        try:
            problem = _verify("--no-extend")  # nothing new chained on top: the put-back stays exact
            assert f"event {written[0].pk} is not in the chain although the sequencer passed it" in problem, problem
        finally:
            put_back(admin, "audit_chainlink", link_copy)
            put_back(admin, "audit_checkpoint", checkpoint_copy)
    assert verify_chain().ok
