"""Web sessions: they end after inactivity, and approving needs a recent sign-in however active the session."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.test import Client, override_settings
from django.utils import timezone

from approvals.models import Review, Status, Ticket
from identity.roles import Role
from tests.factories import agent_client, make_user

pytestmark = pytest.mark.usefixtures("services")


def held_ticket() -> Ticket:
    _, agent_api = agent_client(make_user(Role.ENGINEER))
    response = agent_api.post(
        "/api/v1/queries", {"datasource": "clinic", "sql": "DELETE FROM scratch WHERE id = 0"}, format="json"
    )
    assert response.status_code == 202
    return Ticket.objects.get(pk=response.json()["ticket"]["id"])


def test_a_session_ends_after_the_idle_timeout_and_activity_extends_it() -> None:
    from django.conf import settings

    client = Client()
    client.force_login(make_user(Role.REVIEWER))
    idle = timedelta(seconds=settings.SESSION_COOKIE_AGE)
    start = timezone.now()
    with time_machine.travel(start + idle * 0.8, tick=False):
        assert client.get("/").status_code == 200  # activity: the session is extended
    with time_machine.travel(start + idle * 1.6, tick=False):
        assert client.get("/").status_code == 200  # 0.8 idle-periods since the last request
    with time_machine.travel(start + idle * 2.7, tick=False):
        response = client.get("/")
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


@override_settings(REVIEW_REAUTH_SECONDS=300, SESSION_COOKIE_AGE=3600)
def test_approving_needs_a_recent_sign_in() -> None:
    ticket = held_ticket()
    reviewer = make_user(Role.REVIEWER)
    client = Client()
    client.force_login(reviewer)
    with time_machine.travel(timezone.now() + timedelta(seconds=301), tick=False):
        assert client.get(f"/tickets/{ticket.pk}/").status_code == 200  # still signed in, may look
        response = client.post(f"/tickets/{ticket.pk}/review", {"decision": "approve", "comment": "ok"})
        assert response.status_code == 302
        assert (
            response["Location"].startswith("/accounts/login/")
            and f"%2Ftickets%2F{ticket.pk}%2F" in response["Location"]
        )
        assert not Review.objects.filter(ticket=ticket).exists()
        assert client.get("/").status_code == 302  # signed out: the next step is a fresh sign-in
        client.force_login(reviewer)
        assert client.post(f"/tickets/{ticket.pk}/review", {"decision": "approve", "comment": "ok"}).status_code == 302
    assert Review.objects.filter(ticket=ticket, reviewer=reviewer).exists()
    assert Ticket.objects.get(pk=ticket.pk).status != Status.PENDING
