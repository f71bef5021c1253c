"""Who may review, see, cancel and read a ticket: requester, owner, reviewer, compliance and outsider."""

from __future__ import annotations

import pytest

from approvals.models import Review, Status, Ticket
from audit.models import AuditEvent, EventKind
from identity.models import Agent
from identity.roles import Role
from tests.factories import agent_client, api_client, make_user, user_client

pytestmark = pytest.mark.usefixtures("services")


@pytest.fixture
def held() -> dict:  # type: ignore[type-arg]
    """A held ticket requested by an agent whose owner is a reviewer (the tricky case for self-approval)."""
    owner = make_user(Role.ENGINEER, Role.REVIEWER, name="owner")
    agent, token = Agent.issue(owner=owner, name=f"held-agent-{owner.pk}")
    agent_api = api_client(token)
    response = agent_api.post(
        "/api/v1/queries", {"datasource": "clinic", "sql": "DELETE FROM scratch WHERE id = 49"}, format="json"
    )
    assert response.status_code == 202
    return {"ticket_id": response.json()["ticket"]["id"], "owner": owner, "agent": agent, "agent_api": agent_api}


def review(client, ticket_id: int, decision: str = "approve"):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/tickets/{ticket_id}/reviews", {"decision": decision, "comment": ""}, format="json")


def test_agent_cannot_review_even_its_own_owner_being_a_reviewer(held) -> None:  # type: ignore[no-untyped-def]
    assert review(held["agent_api"], held["ticket_id"]).status_code == 403
    assert not Review.objects.filter(ticket_id=held["ticket_id"]).exists()


def test_owner_cannot_review_their_agents_ticket(held) -> None:  # type: ignore[no-untyped-def]
    response = review(user_client(held["owner"]), held["ticket_id"])
    assert response.status_code == 403
    assert "cannot review" in response.json()["detail"]
    assert AuditEvent.objects.filter(kind=EventKind.REVIEW_REFUSED, ticket_id=held["ticket_id"]).exists()


def test_another_agent_of_a_reviewer_cannot_review(held) -> None:  # type: ignore[no-untyped-def]
    _, other_agent_api = agent_client(make_user(Role.REVIEWER))
    assert review(other_agent_api, held["ticket_id"]).status_code == 403


def test_non_reviewer_roles_cannot_review(held) -> None:  # type: ignore[no-untyped-def]
    for role in (Role.ENGINEER, Role.COMPLIANCE, Role.ADMIN):
        assert review(user_client(make_user(role)), held["ticket_id"]).status_code == 403


def test_outsider_cannot_review_or_see(held) -> None:  # type: ignore[no-untyped-def]
    outsider = user_client(make_user())
    assert review(outsider, held["ticket_id"]).status_code == 403
    assert outsider.get(f"/api/v1/tickets/{held['ticket_id']}").status_code == 404
    assert outsider.get(f"/api/v1/tickets/{held['ticket_id']}/wait?timeout=0").status_code == 404
    assert outsider.post(f"/api/v1/tickets/{held['ticket_id']}/cancel").status_code == 404
    assert Ticket.objects.get(pk=held["ticket_id"]).status == Status.PENDING


def test_reviewer_can_review_once(held) -> None:  # type: ignore[no-untyped-def]
    ticket = Ticket.objects.get(pk=held["ticket_id"])
    Ticket.objects.filter(pk=ticket.pk).update(approvals_required=2)  # keep it pending after one approval
    reviewer = user_client(make_user(Role.REVIEWER))
    assert review(reviewer, ticket.pk).status_code == 201
    second = review(reviewer, ticket.pk)
    assert second.status_code == 409
    assert "already reviewed" in second.json()["detail"]
    assert Review.objects.filter(ticket=ticket).count() == 1


def test_visibility(held) -> None:  # type: ignore[no-untyped-def]
    ticket_id = held["ticket_id"]
    assert held["agent_api"].get(f"/api/v1/tickets/{ticket_id}").status_code == 200
    assert user_client(held["owner"]).get(f"/api/v1/tickets/{ticket_id}").status_code == 200
    assert user_client(make_user(Role.REVIEWER)).get(f"/api/v1/tickets/{ticket_id}").status_code == 200
    assert user_client(make_user(Role.COMPLIANCE)).get(f"/api/v1/tickets/{ticket_id}").status_code == 200
    _, stranger_agent = agent_client(held["owner"])  # another agent of the same owner sees only its own tickets
    assert stranger_agent.get(f"/api/v1/tickets/{ticket_id}").status_code == 404


def test_only_the_requester_can_cancel_or_read_results(held) -> None:  # type: ignore[no-untyped-def]
    ticket_id = held["ticket_id"]
    reviewer = user_client(make_user(Role.REVIEWER))
    assert reviewer.post(f"/api/v1/tickets/{ticket_id}/cancel").status_code == 403
    assert reviewer.get(f"/api/v1/tickets/{ticket_id}/result").status_code == 403
    assert held["agent_api"].get(f"/api/v1/tickets/{ticket_id}/result").status_code == 409
    assert held["agent_api"].post(f"/api/v1/tickets/{ticket_id}/cancel").status_code == 200


def test_concurrent_approvals_transition_once(held) -> None:  # type: ignore[no-untyped-def]
    import threading

    ticket_id = held["ticket_id"]
    Ticket.objects.filter(pk=ticket_id).update(approvals_required=2)
    clients = [user_client(make_user(Role.REVIEWER)) for _ in range(4)]
    codes: list[int] = []
    barrier = threading.Barrier(len(clients))

    def approve(client) -> None:  # type: ignore[no-untyped-def]
        barrier.wait()
        codes.append(review(client, ticket_id).status_code)

    threads = [threading.Thread(target=approve, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Exactly two approvals are accepted; the others find it no longer pending.
    assert sorted(codes) == [201, 201, 409, 409]
    assert AuditEvent.objects.filter(kind=EventKind.TICKET_APPROVED, ticket_id=ticket_id).count() == 1
