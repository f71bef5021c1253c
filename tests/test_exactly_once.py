"""An approved statement runs exactly once, even when the executor dies mid-statement or after commit."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from approvals import statement_runner
from approvals.models import Status, Ticket
from identity.roles import Role
from tests import services as svc
from tests.factories import agent_client, make_user, user_client


@pytest.fixture
def private_worker(services) -> Iterator[dict]:  # type: ignore[no-untyped-def,type-arg]
    """Stop the shared worker so the tasks of this test go to workers it controls; restore it afterwards."""
    services.worker.stop()
    workers: list[svc.Service] = []

    def start(name: str) -> svc.Service:
        worker = svc.worker(services.target.write_url, services.log_dir, name=name)
        workers.append(worker)
        return worker

    yield {"start": start}
    for worker in workers:
        worker.stop()
    services.worker = svc.worker(services.target.write_url, services.log_dir)


def submit(client, sql: str) -> int:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/queries", {"datasource": "clinic", "sql": sql}, format="json")
    assert response.status_code == 202, response.json()
    return int(response.json()["ticket"]["id"])


def probe_rows(owner_url: str, note: str) -> int:
    with psycopg.connect(owner_url) as conn:
        return int(conn.execute("SELECT count(*) FROM execution_probe WHERE note = %s", (note,)).fetchone()[0])  # type: ignore[index]


def active_backend(owner_url: str, marker: str) -> bool:
    with psycopg.connect(owner_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
            (f"%{marker}%",),
        ).fetchone()
    return bool(row and row[0])


def test_worker_killed_mid_statement_runs_it_once_after_restart(services, private_worker) -> None:  # type: ignore[no-untyped-def]
    _, agent_api = agent_client(make_user(Role.ENGINEER))
    note = f"killed-mid-statement-{time.monotonic_ns()}"
    ticket_id = submit(agent_api, f"INSERT INTO execution_probe (note) SELECT '{note}' FROM pg_sleep(3)")
    first = private_worker["start"]("worker-a")
    assert (
        user_client(make_user(Role.REVIEWER))
        .post(f"/api/v1/tickets/{ticket_id}/reviews", {"decision": "approve"}, format="json")
        .status_code
        == 201
    )

    svc.wait_until(lambda: active_backend(services.target.owner_url, note), 20, what="statement running on target")
    first.kill()
    assert Ticket.objects.get(pk=ticket_id).status == Status.EXECUTING
    # The orphaned backend notices its client is gone and rolls back: nothing committed.
    svc.wait_until(lambda: not active_backend(services.target.owner_url, note), 20, what="orphan backend to end")
    assert probe_rows(services.target.owner_url, note) == 0

    private_worker["start"]("worker-b")  # recovery at start: ledger empty and approval still valid, so it runs now
    svc.wait_until(
        lambda: Ticket.objects.get(pk=ticket_id).status in {Status.EXECUTED, Status.FAILED}, 30, what="recovery"
    )
    ticket = Ticket.objects.get(pk=ticket_id)
    assert ticket.status == Status.EXECUTED, ticket.error
    assert ticket.rowcount == 1
    assert ticket.execution_attempts == 1  # claimed once; recovery resumed the same claim
    assert probe_rows(services.target.owner_url, note) == 1


def test_crash_after_commit_is_settled_from_the_ledger_without_rerunning(services, private_worker) -> None:  # type: ignore[no-untyped-def]
    _, agent_api = agent_client(make_user(Role.ENGINEER))
    note = f"committed-before-crash-{time.monotonic_ns()}"
    ticket_id = submit(agent_api, f"INSERT INTO execution_probe (note) VALUES ('{note}')")
    assert (
        user_client(make_user(Role.REVIEWER))
        .post(f"/api/v1/tickets/{ticket_id}/reviews", {"decision": "approve"}, format="json")
        .status_code
        == 201
    )
    # No worker is running. Play an executor that commits on the target and dies before telling the control plane.
    ticket = Ticket.objects.get(pk=ticket_id)
    Ticket.objects.filter(pk=ticket_id).update(status=Status.EXECUTING)
    statement_runner.run_once(
        url=services.target.write_url,
        execution_key=str(ticket.execution_key),
        ticket_id=ticket.pk,
        sql=ticket.sql,
        approved_sha256=ticket.sql_sha256,
        statement_timeout_ms=5000,
        row_cap=10,
        finish=lambda raw: {"columns": raw.columns, "rows": [], "truncated": False, "masking": {}},
    )
    assert probe_rows(services.target.owner_url, note) == 1

    private_worker["start"]("worker-c")
    svc.wait_until(lambda: Ticket.objects.get(pk=ticket_id).status == Status.EXECUTED, 30, what="recovery")
    assert Ticket.objects.get(pk=ticket_id).rowcount == 1
    assert probe_rows(services.target.owner_url, note) == 1


def test_duplicate_deliveries_run_once(services) -> None:  # type: ignore[no-untyped-def]
    from approvals.tasks import execute_ticket_task

    _, agent_api = agent_client(make_user(Role.ENGINEER))
    note = f"delivered-thrice-{time.monotonic_ns()}"
    ticket_id = submit(agent_api, f"INSERT INTO execution_probe (note) VALUES ('{note}')")
    assert (
        user_client(make_user(Role.REVIEWER))
        .post(f"/api/v1/tickets/{ticket_id}/reviews", {"decision": "approve"}, format="json")
        .status_code
        == 201
    )
    execute_ticket_task.delay(ticket_id)
    execute_ticket_task.delay(ticket_id, recovering=True)
    svc.wait_until(lambda: Ticket.objects.get(pk=ticket_id).status == Status.EXECUTED, 30, what="execution")
    time.sleep(1)
    assert probe_rows(services.target.owner_url, note) == 1


def test_changed_statement_is_refused(services) -> None:  # type: ignore[no-untyped-def]
    """If the stored SQL no longer matches the approved digest, nothing runs."""
    from approvals.execution import execute_ticket

    _, agent_api = agent_client(make_user(Role.ENGINEER))
    note = f"tampered-{time.monotonic_ns()}"
    ticket_id = submit(agent_api, f"INSERT INTO execution_probe (note) VALUES ('{note}')")
    services.worker.stop()
    try:
        assert (
            user_client(make_user(Role.REVIEWER))
            .post(f"/api/v1/tickets/{ticket_id}/reviews", {"decision": "approve"}, format="json")
            .status_code
            == 201
        )
        Ticket.objects.filter(pk=ticket_id).update(
            sql=f"INSERT INTO execution_probe (note) VALUES ('{note}'), ('{note}')"
        )
        import os

        os.environ["DATASOURCE_CLINIC_WRITE_URL"] = services.target.write_url  # play the executor in-process
        try:
            report = execute_ticket(ticket_id)
        finally:
            del os.environ["DATASOURCE_CLINIC_WRITE_URL"]
        assert report.status == Status.FAILED
        assert "differ from the approved digest" in Ticket.objects.get(pk=ticket_id).error
        assert probe_rows(services.target.owner_url, note) == 0
    finally:
        services.worker = svc.worker(services.target.write_url, services.log_dir)
