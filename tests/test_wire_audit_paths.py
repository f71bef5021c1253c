"""A wire statement's audit record is durable before its rows arrive, on both of the gateway's audit paths."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from audit.batch_writer import COLUMNS
from audit.journal_format import scan
from audit.models import AuditEvent, EventKind
from identity.roles import Role
from tests import services as svc
from tests.factories import make_agent, make_user
from tests.services import wait_until


@pytest.fixture(scope="module")
def table_gateway(target, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A gateway without a journal: each record waits for a commit of the event table."""
    service, port = svc.gateway(
        target.read_url,
        tmp_path_factory.mktemp("table-audit"),
        name="table-gateway",
        extra_env={"AUDIT_JOURNAL_DIR": ""},
    )
    yield port
    service.stop()


@pytest.fixture(scope="module")
def journal_gateway(target, tmp_path_factory):  # type: ignore[no-untyped-def]
    state = tmp_path_factory.mktemp("journal-audit")
    service, port = svc.gateway(target.read_url, state, name="journal-gateway")
    yield port, state / "journal-gateway-journal"
    service.stop()


def _dsn(port: int) -> tuple[object, str]:
    agent, token = make_agent(make_user(Role.ENGINEER))
    return agent, f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{port}/clinic"


def test_without_a_journal_the_record_is_in_the_table_when_the_rows_arrive(table_gateway) -> None:  # type: ignore[no-untyped-def]
    agent, dsn = _dsn(table_gateway)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT code FROM diagnosis_codes ORDER BY code LIMIT 1").fetchone() is not None
        # No waiting: the commit came before the rows.
        assert AuditEvent.objects.filter(
            agent=agent, kind=EventKind.QUERY_SUBMITTED, statement__contains="diagnosis_codes"
        ).exists()


def test_with_a_journal_the_record_is_in_the_journal_when_the_rows_arrive_and_shipped_after(journal_gateway) -> None:  # type: ignore[no-untyped-def]
    port, journal = journal_gateway
    agent, dsn = _dsn(port)
    marker = f"/* journal {agent.pk} */"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(f"SELECT code FROM diagnosis_codes ORDER BY code LIMIT 1 {marker}").fetchone() is not None
        statement = COLUMNS.index("statement")
        written = [
            record.payload.split(b"\t")[statement]
            for segment in sorted(Path(journal).glob("slot-*/*.seg"))
            for record in scan(segment.read_bytes())
        ]
        assert any(marker.encode() in value for value in written)
    wait_until(
        lambda: AuditEvent.objects.filter(
            agent=agent, kind=EventKind.QUERY_SUBMITTED, statement__contains=marker
        ).exists(),
        10,
        what="the journal to ship the record",
    )
