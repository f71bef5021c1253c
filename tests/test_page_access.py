"""Every reviewer page and action, for each kind of person: outsider, owner (whose agent asked), another
engineer, reviewer and compliance officer, and nobody signed in. (The requesting agent has no web sign-in; its
API access is in test_review_access.)"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from approvals.models import Review, Ticket
from identity.roles import Role
from tests.factories import agent_client, make_user

pytestmark = pytest.mark.usefixtures("services")

PAGES = ["/tickets/{id}/", "/tickets/{id}/row", "/tickets/{id}/live", "/tickets/{id}/estimate"]


@pytest.fixture
def setting() -> dict[str, Any]:
    owner = make_user(Role.ENGINEER)
    _, agent_api = agent_client(owner)
    response = agent_api.post(
        "/api/v1/queries", {"datasource": "clinic", "sql": "DELETE FROM scratch WHERE id = 0"}, format="json"
    )
    assert response.status_code == 202
    return {
        "ticket": Ticket.objects.get(pk=response.json()["ticket"]["id"]),
        "owner": owner,
        "engineer": make_user(Role.ENGINEER),
        "outsider": make_user(),
        "reviewer": make_user(Role.REVIEWER),
        "compliance": make_user(Role.COMPLIANCE),
    }


def signed_in(user: Any | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


EXPECTED_PAGES = {"owner": 200, "engineer": 404, "outsider": 404, "reviewer": 200, "compliance": 200}


@pytest.mark.parametrize("who", sorted(EXPECTED_PAGES))
def test_ticket_pages(setting: dict[str, Any], who: str) -> None:
    client = signed_in(setting[who])
    for page in PAGES:
        url = page.format(id=setting["ticket"].pk)
        assert client.get(url).status_code == EXPECTED_PAGES[who], (who, url)
    queue = client.get("/queue/")  # `/` lands each role elsewhere (phigate.navigation.landing_url)
    assert queue.status_code == 200
    listed = f'data-ticket="{setting["ticket"].pk}"' in queue.content.decode()
    assert listed == (who in ("owner", "reviewer", "compliance")), who


def test_nobody_signed_in_is_sent_to_sign_in(setting: dict[str, Any]) -> None:
    client = signed_in(None)
    for page in ["/", "/queue/", *PAGES]:
        response = client.get(page.format(id=setting["ticket"].pk))
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), page
    assert client.post(f"/tickets/{setting['ticket'].pk}/review", {"decision": "approve"}).status_code == 302
    assert not Review.objects.filter(ticket=setting["ticket"]).exists()


@pytest.mark.parametrize("who", ["owner", "engineer", "outsider", "compliance"])
def test_only_a_reviewer_reviews(setting: dict[str, Any], who: str) -> None:
    response = signed_in(setting[who]).post(f"/tickets/{setting['ticket'].pk}/review", {"decision": "approve"})
    assert response.status_code == 403, who
    assert not Review.objects.filter(ticket=setting["ticket"]).exists()


def test_a_reviewer_reviews(setting: dict[str, Any]) -> None:
    response = signed_in(setting["reviewer"]).post(
        f"/tickets/{setting['ticket'].pk}/review", {"decision": "reject", "comment": "not today"}
    )
    assert response.status_code == 302
    assert Review.objects.filter(ticket=setting["ticket"], reviewer=setting["reviewer"]).exists()
