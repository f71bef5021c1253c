"""The wire gateway with real clients: psql, psycopg 3, asyncpg, pgbench (simple, extended and prepared)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from urllib.parse import quote

import asyncpg
import psycopg
import pytest
from psycopg import errors

from approvals.models import Status, Ticket
from audit.models import AuditEvent, EventKind
from identity.roles import Role
from policy.catalog_cache import REFRESH_FLOOR_SECONDS
from tests import environment
from tests.factories import make_agent, make_user, mark_classified, user_client
from tests.services import wait_until


@pytest.fixture
def agent(services):  # type: ignore[no-untyped-def]
    owner = make_user(Role.ENGINEER)
    agent, token = make_agent(owner)
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    return {"agent": agent, "token": token, "dsn": dsn, "port": services.gateway_port}


def owner_rows(services, sql: str) -> list[tuple]:  # type: ignore[no-untyped-def,type-arg]
    with psycopg.connect(services.target.owner_url) as conn:
        return conn.execute(sql).fetchall()


PHI_QUERY = "SELECT id, mrn, full_name, ssn, date_of_birth, phone FROM patients WHERE id <= 5 ORDER BY id"


def test_psycopg_reads_non_phi_rows_unchanged(services, agent) -> None:  # type: ignore[no-untyped-def]
    sql = "SELECT code, description FROM diagnosis_codes ORDER BY code"
    with psycopg.connect(agent["dsn"]) as conn:
        assert conn.execute(sql).fetchall() == owner_rows(services, sql)


def test_masked_results_identical_across_protocols_and_formats(services, agent) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(agent["dsn"]) as conn:
        extended_text = conn.execute(PHI_QUERY).fetchall()
        with conn.cursor(binary=True) as cursor:
            extended_binary = cursor.execute(PHI_QUERY).fetchall()
        prepared = conn.execute(PHI_QUERY, prepare=True).fetchall()
    with psycopg.ClientCursor(psycopg.connect(agent["dsn"])) as cursor:  # simple query protocol
        simple = cursor.execute(PHI_QUERY).fetchall()
        cursor.connection.close()

    async def with_asyncpg() -> list[tuple]:  # type: ignore[type-arg]
        conn = await asyncpg.connect(agent["dsn"])
        try:
            return [tuple(record) for record in await conn.fetch(PHI_QUERY)]
        finally:
            await conn.close()

    binary_asyncpg = asyncio.run(with_asyncpg())
    truth = owner_rows(services, PHI_QUERY)
    assert extended_text == extended_binary == prepared == simple == binary_asyncpg
    for masked, real in zip(extended_text, truth, strict=True):
        assert masked[0] == real[0]
        for got, value in zip(masked[1:], real[1:], strict=True):
            assert str(value) not in str(got)
        assert masked[3] == "***" + real[3][-4:]
        assert masked[4] == str(real[4].year)
    http = user_client(agent["agent"].owner).post(
        "/api/v1/queries", {"datasource": "clinic", "sql": PHI_QUERY}, format="json"
    )
    assert [list(row) for row in extended_text] == http.json()["rows"]  # the API types values like psycopg


def test_psql_simple_protocol_and_catalog_queries(services, agent) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
    run = subprocess.run(
        ["psql", agent["dsn"], "-X", "-At", "-c", "SELECT ssn FROM patients WHERE id = 1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    real_ssn = owner_rows(services, "SELECT ssn FROM patients WHERE id = 1")[0][0]
    assert run.stdout.strip() == "***" + real_ssn[-4:]
    describe = subprocess.run(
        ["psql", agent["dsn"], "-X", "-c", r"\d patients"], capture_output=True, text=True, env=env, timeout=30
    )
    assert describe.returncode == 0, describe.stderr
    assert "date_of_birth" in describe.stdout


def test_delete_is_held_with_ha001_and_ticket_id(agent) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(agent["dsn"]) as conn, pytest.raises(psycopg.Error) as raised:
        conn.execute("DELETE FROM scratch WHERE id = %s", (48,))
    error = raised.value
    assert error.sqlstate == "HA001"
    ticket_id = int(str(error.diag.message_primary).rsplit(" ", 1)[1])
    ticket = Ticket.objects.get(pk=ticket_id)
    assert ticket.agent == agent["agent"] and ticket.status == Status.PENDING
    assert ticket.sql == "DELETE FROM scratch WHERE id = $1"
    assert ticket.statement_params is not None and ticket.statement_params.for_audit() == ["48"]
    assert f"/tickets/{ticket_id}/" in (error.diag.message_hint or "")


def _wait_dsn(agent) -> str:  # type: ignore[no-untyped-def]
    return agent["dsn"] + "?options=" + quote("-c gateway.approval=wait")


def _ticket_for(agent_obj, sql_prefix: str) -> Ticket:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ticket = Ticket.objects.filter(agent=agent_obj, sql__startswith=sql_prefix).order_by("-id").first()
        if ticket is not None:
            return ticket
        time.sleep(0.1)
    raise AssertionError("no ticket appeared")


def test_wait_mode_returns_the_real_rowcount_after_approval(services, agent) -> None:  # type: ignore[no-untyped-def]
    outcome: dict[str, object] = {}

    def run() -> None:
        with psycopg.connect(_wait_dsn(agent)) as conn:
            cursor = conn.execute("UPDATE scratch SET label = 'waited' WHERE id IN (%s, %s)", (34, 35))
            outcome["rowcount"] = cursor.rowcount

    client = threading.Thread(target=run)
    client.start()
    ticket = _ticket_for(agent["agent"], "UPDATE scratch SET label = 'waited'")
    assert client.is_alive()
    response = user_client(make_user(Role.REVIEWER)).post(
        f"/api/v1/tickets/{ticket.pk}/reviews", {"decision": "approve"}, format="json"
    )
    assert response.status_code == 201
    client.join(timeout=60)
    assert outcome["rowcount"] == 2
    assert owner_rows(services, "SELECT label FROM scratch WHERE id IN (34, 35)") == [("waited",), ("waited",)]


def test_wait_mode_rejection_returns_the_reviewers_comment(agent) -> None:  # type: ignore[no-untyped-def]
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            with psycopg.connect(_wait_dsn(agent)) as conn:
                conn.execute("DELETE FROM scratch WHERE id = 36")
        except psycopg.Error as exc:
            outcome["error"] = exc

    client = threading.Thread(target=run)
    client.start()
    ticket = _ticket_for(agent["agent"], "DELETE FROM scratch WHERE id = 36")
    user_client(make_user(Role.REVIEWER)).post(
        f"/api/v1/tickets/{ticket.pk}/reviews", {"decision": "reject", "comment": "use a soft delete"}, format="json"
    )
    client.join(timeout=60)
    error = outcome["error"]
    assert isinstance(error, psycopg.Error) and error.sqlstate == "HA002"
    assert "use a soft delete" in str(error)


def test_denied_statement_gets_42501(agent) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(agent["dsn"]) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="denied by policy"):
            conn.execute("COPY scratch TO PROGRAM 'true'")
        # Like any error inside a transaction block (psycopg opened one), the refusal aborts it...
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)  # ...and the session goes on


def test_transactions_pass_through(agent) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(agent["dsn"]) as conn:
        with conn.transaction():
            first = conn.execute("SELECT count(*) FROM scratch").fetchone()
            conn.execute("SAVEPOINT s1")
            conn.execute("ROLLBACK TO SAVEPOINT s1")
            second = conn.execute("SELECT count(*) FROM scratch").fetchone()
        assert first == second
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_read_only_role_refuses_writes_even_if_policy_were_fooled(agent) -> None:  # type: ignore[no-untyped-def]
    """SET is allowed on the wire, but the upstream role still cannot write."""
    with psycopg.connect(agent["dsn"]) as conn, pytest.raises(psycopg.Error):
        conn.execute("SELECT * FROM scratch FOR UPDATE")  # held: the gateway never sends it


def test_wrong_token_is_refused_and_audited(agent) -> None:  # type: ignore[no-untyped-def]
    bad = agent["dsn"].replace(quote(agent["token"], safe=""), "pga_wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(bad, connect_timeout=10)
    assert AuditEvent.objects.filter(kind=EventKind.AUTH_FAILED, agent_name=agent["agent"].name).exists()


def test_unknown_agent_is_refused(agent) -> None:  # type: ignore[no-untyped-def]
    dsn = f"postgresql://nobody:pga_x@127.0.0.1:{agent['port']}/clinic"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn, connect_timeout=10)


def test_cancel_request_reaches_the_upstream(agent) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(agent["dsn"], autocommit=True) as conn:
        timer = threading.Timer(1.0, conn.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT count(*) FROM generate_series(1, 2000000000)")
        assert time.monotonic() - started < 20
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_every_statement_is_audited_with_its_parameters(agent) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(agent["dsn"]) as conn:
        conn.execute("SELECT label FROM scratch WHERE id = %s", (7,)).fetchall()
    # The records are durable in the gateway's journal before the rows are sent; the event table has them
    # once the journal ships (a fraction of a second later).
    every_submitted = AuditEvent.objects.filter(agent=agent["agent"], kind=EventKind.QUERY_SUBMITTED)
    wait_until(lambda: every_submitted.count() >= 3, 10, what="the submitted records to be shipped")
    submitted = every_submitted.get(statement__contains="FROM scratch")
    assert submitted.front == "wire" and submitted.session_id
    assert submitted.details["params"] == ["7"]
    statements = list(
        AuditEvent.objects.filter(agent=agent["agent"], kind=EventKind.QUERY_SUBMITTED)
        .order_by("id")
        .values_list("statement", flat=True)
    )
    assert statements == ["BEGIN", "SELECT label FROM scratch WHERE id = $1", "COMMIT"]  # every statement
    deadline = time.monotonic() + 10  # the result record is written after the rows are sent
    executed = None
    while executed is None and time.monotonic() < deadline:
        executed = AuditEvent.objects.filter(
            agent=agent["agent"],
            kind=EventKind.QUERY_EXECUTED,
            details__statement_id=submitted.details["statement_id"],
        ).first()
        time.sleep(0.1)
    assert executed is not None and executed.details["rowcount"] == 1
    assert len(executed.details["result_sha256"]) == 64


@pytest.fixture(scope="module")
def pgbench_tables(target):  # type: ignore[no-untyped-def]
    subprocess.run(["pgbench", "-i", "-s", "1", "-q", target.owner_url], check=True, capture_output=True, timeout=120)
    with psycopg.connect(target.owner_url) as conn:
        for table in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"):
            conn.execute(f'GRANT SELECT ON {table} TO "{environment.READ_ROLE}"')
    mark_classified("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
    time.sleep(REFRESH_FLOOR_SECONDS)  # new tables reach the gateway's catalog snapshot within this window


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only(agent, pgbench_tables, mode: str) -> None:  # type: ignore[no-untyped-def]
    run = subprocess.run(
        ["pgbench", "-S", "-n", "-M", mode, "-c", "2", "-t", "50", agent["dsn"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    assert "number of transactions actually processed: 100/100" in run.stdout


def test_a_cached_decision_never_answers_for_another_sort_position(agent) -> None:  # type: ignore[no-untyped-def]
    """``ORDER BY 1`` is allowed and cached; ``ORDER BY 2`` sorts on the SSN (an inference leak) and is held,
    although it differs from the cached statement by one digit that looks like a literal."""
    with psycopg.ClientCursor(psycopg.connect(agent["dsn"], autocommit=True)) as cursor:
        for _ in range(2):  # the second run is answered from the cache
            cursor.execute("SELECT id, ssn FROM patients WHERE id <= 3 ORDER BY 1")
            assert len(cursor.fetchall()) == 3
        cursor.execute("SELECT id, ssn FROM patients WHERE id <= 4 ORDER BY 1")  # other literal: a shape hit
        assert len(cursor.fetchall()) == 4
        with pytest.raises(psycopg.Error) as raised:
            cursor.execute("SELECT id, ssn FROM patients WHERE id <= 3 ORDER BY 2")
        assert raised.value.sqlstate == "HA001"
        cursor.connection.close()


def test_the_result_record_says_what_was_masked_and_shows_only_masked_values(services, agent) -> None:  # type: ignore[no-untyped-def]
    """Repeated reads take the memoized description path; their records must still name every mask."""
    real_ssn = owner_rows(services, "SELECT ssn FROM patients WHERE id = 2")[0][0]
    with psycopg.connect(agent["dsn"], autocommit=True) as conn:
        for _ in range(3):
            conn.execute("SELECT id, ssn FROM patients WHERE id = 2").fetchall()
    executed = AuditEvent.objects.filter(
        agent=agent["agent"], kind=EventKind.QUERY_EXECUTED, details__preview__columns=["id", "ssn"]
    )
    wait_until(lambda: executed.count() >= 3, 10, what="the result records to be shipped")
    for event in executed:
        assert event.details["masking"]["ssn"]["phi_type"] == "ssn"
        assert "ssn" in event.details["phi_types"]
        assert event.details["rowcount"] == 1 and len(event.details["result_sha256"]) == 64
        shown = event.details["preview"]["rows"][0][1]
        assert shown and shown != real_ssn and real_ssn not in str(event.details)
