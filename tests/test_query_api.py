"""POST /api/v1/queries: safe reads come back at once (masked), risky ones become tickets, bad ones are refused."""

from __future__ import annotations

import psycopg
import pytest

from approvals.models import Status, Ticket
from audit.models import AuditEvent, EventKind
from identity.roles import Role
from tests.factories import agent_client, make_user, user_client

pytestmark = pytest.mark.usefixtures("services")


def submit(client, sql: str, reason: str = ""):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/queries", {"datasource": "clinic", "sql": sql, "reason": reason}, format="json")


def test_select_on_non_phi_table_returns_rows_immediately() -> None:
    _, client = agent_client(make_user(Role.ENGINEER))
    response = submit(client, "SELECT code, description FROM diagnosis_codes ORDER BY code LIMIT 3")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "executed"
    assert body["columns"] == ["code", "description"]
    assert body["rowcount"] == 3 and len(body["rows"]) == 3
    assert all(isinstance(value, str) for row in body["rows"] for value in row)


def test_phi_columns_are_masked_for_agents(services) -> None:  # type: ignore[no-untyped-def]
    _, client = agent_client(make_user(Role.ENGINEER))
    response = submit(
        client,
        "SELECT id, ssn, full_name, email, date_of_birth FROM patients ORDER BY id LIMIT 5",
    )
    assert response.status_code == 200, response.json()
    rows = response.json()["rows"]
    with psycopg.connect(services.target.owner_url) as conn:
        truth = conn.execute(
            "SELECT id, ssn, full_name, email, date_of_birth::text FROM patients ORDER BY patients.id LIMIT 5"
        ).fetchall()
    for got, real in zip(rows, truth, strict=True):
        assert got[0] == real[0] and isinstance(got[0], int)  # the id is not PHI: a JSON number
        for masked, value in zip(got[1:], real[1:], strict=True):
            if value is not None:  # a NULL stays NULL; every present value is masked
                assert masked != value
                assert value not in (masked or "")
        assert got[1].startswith("***") and got[1][-4:] == real[1][-4:]  # partial SSN
        assert got[4] == real[4][:4]  # date of birth generalized to the year


def test_computed_columns_over_phi_are_masked() -> None:
    _, client = agent_client(make_user(Role.ENGINEER))
    response = submit(client, "SELECT upper(full_name) AS n, ssn || '' AS s FROM patients LIMIT 2")
    assert response.status_code == 200, response.json()
    for shout, ssn in response.json()["rows"]:
        # A computed value never carries a pseudonym (it would check guesses) nor "last four" (reverse(ssn)).
        assert shout == "[redacted]"
        assert ssn == "[redacted]"


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM scratch WHERE id = 1",
        "UPDATE scratch SET label = 'x' WHERE id = 2",
        "INSERT INTO scratch VALUES (1000, 'new')",
        "CREATE TABLE made_by_agent (id int)",
        "ALTER TABLE scratch ADD COLUMN extra int",
        "TRUNCATE scratch",
    ],
)
def test_writes_and_ddl_become_tickets(sql: str) -> None:
    agent, client = agent_client(make_user(Role.ENGINEER))
    response = submit(client, sql, reason="cleanup")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["status"] == "pending"
    ticket = Ticket.objects.get(pk=body["ticket"]["id"])
    assert body["ticket"]["url"].endswith(f"/tickets/{ticket.pk}/")
    assert ticket.status == Status.PENDING and ticket.agent == agent and ticket.owner == agent.owner
    assert ticket.sql == sql and ticket.reason == "cleanup"
    assert AuditEvent.objects.filter(kind=EventKind.TICKET_CREATED, ticket_id=ticket.pk, agent=agent).exists()


def test_ddl_and_unqualified_delete_need_two_approvals() -> None:
    _, client = agent_client(make_user(Role.ENGINEER))
    ddl = submit(client, "DROP TABLE scratch").json()
    bulk = submit(client, "DELETE FROM scratch").json()
    narrow = submit(client, "DELETE FROM scratch WHERE id = 3").json()
    required = {
        name: Ticket.objects.get(pk=body["ticket"]["id"]).approvals_required
        for name, body in [("ddl", ddl), ("bulk", bulk), ("narrow", narrow)]
    }
    assert required == {"ddl": 2, "bulk": 2, "narrow": 1}


def test_syntax_error_is_400() -> None:
    _, client = agent_client(make_user(Role.ENGINEER))
    response = submit(client, "SELEC * FROM patients")
    assert response.status_code == 400
    assert response.json()["status"] == "invalid"


def test_denied_statement_is_403_with_reasons() -> None:
    _, client = agent_client(make_user(Role.ENGINEER))
    response = submit(client, "DROP DATABASE clinic")
    assert response.status_code == 403
    body = response.json()
    assert body["status"] == "denied" and body["reasons"]


def test_unknown_datasource_is_denied() -> None:
    _, client = agent_client(make_user(Role.ENGINEER))
    response = client.post("/api/v1/queries", {"datasource": "nope", "sql": "SELECT 1"}, format="json")
    assert response.status_code == 403


def test_missing_or_bad_token_is_401_and_audited() -> None:
    from rest_framework.test import APIClient

    before = AuditEvent.objects.filter(kind=EventKind.AUTH_FAILED).count()
    anonymous = APIClient().post("/api/v1/queries", {"datasource": "clinic", "sql": "SELECT 1"}, format="json")
    assert anonymous.status_code == 401
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Bearer pga_not-a-real-token")
    assert submit(bad, "SELECT 1").status_code == 401
    assert AuditEvent.objects.filter(kind=EventKind.AUTH_FAILED).count() == before + 1


def test_every_read_is_audited_before_and_after() -> None:
    agent, client = agent_client(make_user(Role.ENGINEER))
    assert submit(client, "SELECT count(*) FROM scratch").status_code == 200
    kinds = list(AuditEvent.objects.filter(agent=agent).order_by("id").values_list("kind", flat=True))
    assert kinds[-2:] == [EventKind.QUERY_SUBMITTED, EventKind.QUERY_EXECUTED]
    executed = AuditEvent.objects.filter(agent=agent, kind=EventKind.QUERY_EXECUTED).get()
    assert executed.actor == agent.owner and executed.details["rowcount"] == 1
    assert len(executed.details["result_sha256"]) == 64


def test_human_engineer_with_personal_token_can_query() -> None:
    bob = make_user(Role.ENGINEER)
    response = submit(user_client(bob), "SELECT 1 AS one")
    assert response.status_code == 200 and response.json()["rows"] == [[1]]
