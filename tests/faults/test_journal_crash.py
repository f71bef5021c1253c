"""A gateway killed with SIGKILL right after a result: every record of it is shipped by the next process.

Seen before: a kill -9 lost deferred ``query.executed`` records (2 of 7,119), which waited up to 50 ms in memory
for company. They are now written to the segment at once (the page cache outlives a killed process) and synced
with the next group, so the successor finds them in the slot and ships them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from audit.batch_writer import control_plane_conninfo
from audit.journal import AuditJournal
from audit.models import AuditEvent
from identity.roles import Role
from tests.factories import make_user
from tests.services import wait_until

pytestmark = pytest.mark.timeout(90)

CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import django  # the environment is the test run's own (tests.environment, inherited)
    django.setup()
    from audit.journal import AuditJournal
    from audit.models import EventKind
    from audit.recorder import Context, event_row
    from identity.models import User
    from identity.principal import Principal

    directory, marker, user_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
    principal = Principal(human=User.objects.get(pk=user_id))
    context = Context(front="wire", source_address="127.0.0.1", session_id="crash-test")
    journal = AuditJournal(directory, ship_interval=3600)  # never ships: only the successor can

    def row(kind, statement):
        return event_row(kind, principal=principal, context=context, datasource="clinic", statement=statement,
                         summary="crash test", details={"statement_id": statement})

    async def main():
        for index in range(5):
            # A statement: its submitted record is durable before its rows leave; what it returned is recorded
            # after the fact, as the wire session does.
            await journal.submit_row(row(EventKind.QUERY_SUBMITTED, f"{marker} submitted {index}"))
            journal.submit_row(row(EventKind.QUERY_EXECUTED, f"{marker} executed {index}"), urgent=False)
        print("results sent", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # the instant after the last result: nothing gets to flush

    asyncio.run(main())
    """
)


def test_records_of_the_last_results_survive_a_kill_9(tmp_path: Path) -> None:
    user = make_user(Role.ENGINEER)
    marker = f"crash-{user.pk}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), marker, str(user.pk)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert "results sent" in child.stdout
    assert not AuditEvent.objects.filter(statement__startswith=marker).exists()  # nothing shipped before the kill

    successor = AuditJournal(tmp_path, conninfo=control_plane_conninfo())  # ships what the slot holds at start
    try:
        statements = wait_until(
            lambda: (
                set(AuditEvent.objects.filter(statement__startswith=marker).values_list("statement", flat=True)) or None
            ),
            10,
            what="the successor to ship the leftovers",
        )
    finally:
        successor.close(timeout=5)
    expected = {f"{marker} {kind} {index}" for kind in ("submitted", "executed") for index in range(5)}
    assert statements == expected, f"lost: {sorted(expected - statements)}"
