"""The server-rendered reviewer pages: queue, ticket, approve/reject, for each kind of user."""

from __future__ import annotations

import pytest
from django.test import Client

from approvals.models import Review, Status, Ticket
from identity.roles import Role
from tests.factories import agent_client, make_user

pytestmark = pytest.mark.usefixtures("services")


def held(owner=None) -> Ticket:  # type: ignore[no-untyped-def]
    _, client = agent_client(owner or make_user(Role.ENGINEER))
    response = client.post(
        "/api/v1/queries", {"datasource": "clinic", "sql": "DELETE FROM scratch WHERE id = 45"}, format="json"
    )
    assert response.status_code == 202
    return Ticket.objects.get(pk=response.json()["ticket"]["id"])


def browser(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client(enforce_csrf_checks=True)
    login = client.get("/accounts/login/")
    token = login.cookies["csrftoken"].value
    response = client.post(
        "/accounts/login/",
        {"username": user.username, "password": "correct horse battery", "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302, response.content
    return client


def post_review(client: Client, ticket: Ticket, decision: str):  # type: ignore[no-untyped-def]
    page = client.get(f"/tickets/{ticket.pk}/")
    token = client.cookies["csrftoken"].value
    return page, client.post(
        f"/tickets/{ticket.pk}/review", {"decision": decision, "comment": "ok", "csrfmiddlewaretoken": token}
    )


def test_anonymous_is_sent_to_sign_in() -> None:
    ticket = held()
    for path in ("/", f"/tickets/{ticket.pk}/"):
        response = Client().get(path)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_reviewer_sees_queue_and_approves_in_the_browser() -> None:
    ticket = held()
    reviewer = browser(make_user(Role.REVIEWER))
    queue = reviewer.get("/")
    assert f'data-ticket="{ticket.pk}"'.encode() in queue.content
    page, response = post_review(reviewer, ticket, "approve")
    assert b"DELETE FROM scratch WHERE id = 45" in page.content and b'value="approve"' in page.content
    assert response.status_code == 302
    assert Review.objects.filter(ticket=ticket).count() == 1
    assert Ticket.objects.get(pk=ticket.pk).status in {Status.APPROVED, Status.EXECUTING, Status.EXECUTED}


def test_owner_sees_no_buttons_and_cannot_post() -> None:
    owner = make_user(Role.ENGINEER, Role.REVIEWER)
    ticket = held(owner)
    client = browser(owner)
    page, response = post_review(client, ticket, "approve")
    assert page.status_code == 200 and b'value="approve"' not in page.content
    assert b"cannot review" in page.content
    assert response.status_code == 403
    assert not Review.objects.filter(ticket=ticket).exists()


def test_outsider_cannot_see_or_review() -> None:
    ticket = held()
    client = browser(make_user())
    assert client.get(f"/tickets/{ticket.pk}/").status_code == 404
    assert f'data-ticket="{ticket.pk}"'.encode() not in client.get("/").content
    token = client.cookies["csrftoken"].value
    response = client.post(f"/tickets/{ticket.pk}/review", {"decision": "approve", "csrfmiddlewaretoken": token})
    assert response.status_code == 403
    assert not Review.objects.filter(ticket=ticket).exists()


def test_compliance_officer_can_read_but_not_review() -> None:
    ticket = held()
    client = browser(make_user(Role.COMPLIANCE))
    page, response = post_review(client, ticket, "approve")
    assert page.status_code == 200 and b'value="approve"' not in page.content
    assert response.status_code == 403


def test_review_without_csrf_token_is_refused() -> None:
    ticket = held()
    client = browser(make_user(Role.REVIEWER))
    assert client.post(f"/tickets/{ticket.pk}/review", {"decision": "approve"}).status_code == 403
    assert not Review.objects.filter(ticket=ticket).exists()
