"""From held statement to executed result: reviewer approval, worker execution, /wait, /result."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from approvals.models import Status, Ticket
from audit.models import AuditEvent, EventKind
from identity.roles import Role
from tests.factories import agent_client, make_user, user_client

pytestmark = pytest.mark.usefixtures("services")


def submit(client, sql: str):  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/queries", {"datasource": "clinic", "sql": sql, "reason": "test"}, format="json")
    assert response.status_code == 202, response.json()
    return response.json()["ticket"]["id"]


def review(client, ticket_id: int, decision: str, comment: str = ""):  # type: ignore[no-untyped-def]
    return client.post(
        f"/api/v1/tickets/{ticket_id}/reviews", {"decision": decision, "comment": comment}, format="json"
    )


def wait_final(client, ticket_id: int, timeout: float = 30) -> dict:  # type: ignore[no-untyped-def,type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/tickets/{ticket_id}/wait?timeout=5").json()
        if body["status"] in {"executed", "failed", "rejected", "expired", "cancelled"}:
            return body
    raise AssertionError(f"ticket {ticket_id} did not finish")


def test_approved_update_executes_once_with_the_right_rowcount(services) -> None:  # type: ignore[no-untyped-def]
    agent, agent_api = agent_client(make_user(Role.ENGINEER))
    reviewer_api = user_client(make_user(Role.REVIEWER))
    ticket_id = submit(agent_api, "UPDATE scratch SET label = 'approved-flow' WHERE id BETWEEN 10 AND 12")

    assert review(reviewer_api, ticket_id, "approve", "looks right").status_code == 201
    body = wait_final(agent_api, ticket_id)

    assert body["status"] == "executed", body
    assert body["rowcount"] == 3
    assert body["reviews"][0]["decision"] == "approve" and body["reviews"][0]["comment"] == "looks right"
    assert body["requested_by"] == {"agent": agent.name, "owner": agent.owner.username}
    with psycopg.connect(services.target.owner_url) as conn:
        labels = conn.execute("SELECT label FROM scratch WHERE id BETWEEN 10 AND 12").fetchall()
        ledger = conn.execute(
            "SELECT count(*) FROM phigate.execution_ledger WHERE ticket_id = %s", (ticket_id,)
        ).fetchone()
    assert labels == [("approved-flow",)] * 3
    assert ledger == (1,)
    result = agent_api.get(f"/api/v1/tickets/{ticket_id}/result")
    assert result.status_code == 200
    assert result.json()["rowcount"] == 3
    kinds = set(AuditEvent.objects.filter(ticket_id=ticket_id).values_list("kind", flat=True))
    assert {
        EventKind.TICKET_CREATED,
        EventKind.TICKET_REVIEWED,
        EventKind.TICKET_APPROVED,
        EventKind.TICKET_EXECUTION_STARTED,
        EventKind.TICKET_EXECUTED,
        EventKind.TICKET_RESULT_READ,
    } <= kinds


def test_result_is_409_before_execution_and_masked_after(services) -> None:  # type: ignore[no-untyped-def]
    _, agent_api = agent_client(make_user(Role.ENGINEER))
    reviewer_api = user_client(make_user(Role.REVIEWER))
    # random() is volatile, so this read is held; its result still goes through masking.
    ticket_id = submit(
        agent_api,
        "SELECT id, ssn, full_name, random() < 2 AS ok, upper(full_name) AS shout FROM patients ORDER BY id LIMIT 4",
    )
    assert agent_api.get(f"/api/v1/tickets/{ticket_id}/result").status_code == 409
    assert review(reviewer_api, ticket_id, "approve").status_code == 201
    assert wait_final(agent_api, ticket_id)["status"] == "executed"
    result = agent_api.get(f"/api/v1/tickets/{ticket_id}/result").json()
    with psycopg.connect(services.target.owner_url) as conn:
        truth = conn.execute("SELECT ssn, full_name FROM patients ORDER BY id LIMIT 4").fetchall()
    assert result["columns"] == ["id", "ssn", "full_name", "ok", "shout"]
    assert len(result["rows"]) == 4
    for row, (ssn, name) in zip(result["rows"], truth, strict=True):
        assert row[1] != ssn and row[1].endswith(ssn[-4:])
        assert row[2] != name and name not in row[2]
        assert row[3] is True  # computed, but lineage proves it carries no PHI: a JSON boolean
        assert row[4] == "[redacted]"  # upper(name): computed, so never a pseudonym (it would check guesses)


def test_wait_returns_promptly_when_the_status_changes() -> None:
    _, agent_api = agent_client(make_user(Role.ENGINEER))
    reviewer_api = user_client(make_user(Role.REVIEWER))
    ticket_id = submit(agent_api, "DELETE FROM scratch WHERE id = 40")
    seen: dict[str, object] = {}

    def long_poll() -> None:
        started = time.monotonic()
        seen["body"] = agent_api.get(f"/api/v1/tickets/{ticket_id}/wait?timeout=30").json()
        seen["elapsed"] = time.monotonic() - started

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(1.0)
    assert poller.is_alive(), "wait returned before anything changed"
    assert review(reviewer_api, ticket_id, "approve").status_code == 201
    poller.join(timeout=30)
    assert seen["body"]["status"] != "pending"  # type: ignore[index]
    assert seen["elapsed"] < 10  # type: ignore[operator]


def test_wait_times_out_with_unchanged_ticket() -> None:
    _, agent_api = agent_client(make_user(Role.ENGINEER))
    ticket_id = submit(agent_api, "DELETE FROM scratch WHERE id = 41")
    started = time.monotonic()
    body = agent_api.get(f"/api/v1/tickets/{ticket_id}/wait?timeout=1").json()
    assert body["status"] == "pending"
    assert 0.9 <= time.monotonic() - started < 5


def test_rejected_ticket_never_executes(services) -> None:  # type: ignore[no-untyped-def]
    _, agent_api = agent_client(make_user(Role.ENGINEER))
    reviewer_api = user_client(make_user(Role.REVIEWER))
    ticket_id = submit(agent_api, "DELETE FROM scratch WHERE id = 42")
    assert review(reviewer_api, ticket_id, "reject", "not today").status_code == 201
    assert wait_final(agent_api, ticket_id)["status"] == "rejected"
    time.sleep(1)
    with psycopg.connect(services.target.owner_url) as conn:
        assert conn.execute("SELECT count(*) FROM scratch WHERE id = 42").fetchone() == (1,)
    assert review(user_client(make_user(Role.REVIEWER)), ticket_id, "approve").status_code == 409


def test_cancelled_ticket_never_executes(services) -> None:  # type: ignore[no-untyped-def]
    _, agent_api = agent_client(make_user(Role.ENGINEER))
    ticket_id = submit(agent_api, "DELETE FROM scratch WHERE id = 43")
    assert agent_api.post(f"/api/v1/tickets/{ticket_id}/cancel").status_code == 200
    assert agent_api.post(f"/api/v1/tickets/{ticket_id}/cancel").status_code == 409
    assert review(user_client(make_user(Role.REVIEWER)), ticket_id, "approve").status_code == 409
    assert Ticket.objects.get(pk=ticket_id).status == Status.CANCELLED
    with psycopg.connect(services.target.owner_url) as conn:
        assert conn.execute("SELECT count(*) FROM scratch WHERE id = 43").fetchone() == (1,)


def test_two_approvals_needed_for_unqualified_delete(services) -> None:  # type: ignore[no-untyped-def]
    _, agent_api = agent_client(make_user(Role.ENGINEER))
    first, second = user_client(make_user(Role.REVIEWER)), user_client(make_user(Role.REVIEWER))
    ticket_id = submit(agent_api, "DELETE FROM execution_probe")
    assert review(first, ticket_id, "approve").status_code == 201
    assert Ticket.objects.get(pk=ticket_id).status == Status.PENDING
    assert review(second, ticket_id, "approve").status_code == 201
    assert wait_final(agent_api, ticket_id)["status"] == "executed"


def test_failed_statement_reports_without_leaking_values() -> None:
    _, agent_api = agent_client(make_user(Role.ENGINEER))
    ticket_id = submit(agent_api, "UPDATE patients SET date_of_birth = full_name::date WHERE id = 1")
    assert review(user_client(make_user(Role.REVIEWER)), ticket_id, "approve").status_code == 201
    body = wait_final(agent_api, ticket_id)
    assert body["status"] == "failed"
    assert body["error"].startswith("22")  # invalid datetime format, class 22
    name = Ticket.objects.get(pk=ticket_id)  # the patient's name must not appear in the error
    assert "withheld" in name.error
