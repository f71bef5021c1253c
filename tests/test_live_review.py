"""Reviewers in real Chromium: sign in through a real OpenID provider on loopback, watch the queue update live
(Channels websockets), approve, and see the execution, while a second browser session sees the same updates.

Screenshots of the queue and the ticket page go to the ``screenshots`` fixture's directory: pytest's temporary
directory, or docs/screenshots/ when refreshed on purpose (``make screenshots``).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from approvals.models import Status, Ticket
from audit.models import AuditEvent, EventKind
from identity.roles import Role
from tests import services as svc
from tests.factories import agent_client, make_user

CLIENT_ID = "phigate-test"


@dataclass(frozen=True)
class OidcSite:
    url: str
    provider: str
    users: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def oidc_site(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcSite]:
    """An OpenID provider process and a web process configured for it (local password sign-in off)."""
    folder = tmp_path_factory.mktemp("oidc")
    users = {
        name: {
            "username": name,
            "password": secrets.token_urlsafe(12),
            "email": f"{name}@clinic.test",
            "groups": groups,
        }
        for name, groups in (
            (f"alice{secrets.token_hex(3)}", ["reviewer"]),
            (f"dave{secrets.token_hex(3)}", ["reviewer", "engineering-all"]),
            (f"carol{secrets.token_hex(3)}", ["compliance"]),
        )
    }
    users_file = folder / "users.json"
    users_file.write_text(json.dumps(list(users.values())))
    client_secret = secrets.token_urlsafe(24)
    provider, provider_port = svc.oidc_provider(services.log_dir, users_file, CLIENT_ID, client_secret)
    issuer = f"http://127.0.0.1:{provider_port}"
    web, web_port = svc.web(
        services.log_dir,
        name="web-oidc",
        extra_env={
            "LOCAL_LOGIN": "False",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "OIDC_RP_CLIENT_ID": CLIENT_ID,
            "OIDC_RP_CLIENT_SECRET": client_secret,
            "OIDC_OP_AUTHORIZATION_ENDPOINT": f"{issuer}/authorize",
            "OIDC_OP_TOKEN_ENDPOINT": f"{issuer}/token",
            "OIDC_OP_USER_ENDPOINT": f"{issuer}/userinfo",
            "OIDC_OP_JWKS_ENDPOINT": f"{issuer}/jwks",
        },
    )
    yield OidcSite(url=f"http://127.0.0.1:{web_port}", provider=issuer, users=users)
    web.stop()
    provider.stop()


def sign_in_with_oidc(chromium: Any, site: OidcSite, name: str) -> Any:
    page = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{site.url}/accounts/login/")
    page.click("text=Sign in with your organisation")
    page.wait_for_url(f"{site.provider}/authorize*")
    page.fill("#op-login", name)
    page.fill("#op-password", site.users[name]["password"])
    page.click("#op-submit")
    # `/` lands each role where its work is: reviewers on the live queue, compliance officers on the audit trail.
    page.wait_for_url(lambda url: url in (f"{site.url}/", f"{site.url}/audit/"))
    if page.url == f"{site.url}/":
        page.wait_for_selector("#live-state[data-state=live]")
    return page


def row(page: Any, table: str, ticket_id: int) -> str:
    return f"#{table} tr[data-ticket='{ticket_id}']"


def test_reviewers_see_a_ticket_arrive_approve_it_and_see_it_executed(
    chromium: Any, oidc_site: OidcSite, screenshots: Path
) -> None:
    alice, dave = (name for name in oidc_site.users if name.startswith(("alice", "dave")))
    first = sign_in_with_oidc(chromium, oidc_site, alice)
    second = sign_in_with_oidc(chromium, oidc_site, dave)
    assert "Waiting for review" in first.content()  # the groups claim made them reviewers

    owner = make_user(Role.ENGINEER)
    _, agent_api = agent_client(owner)
    response = agent_api.post(
        "/api/v1/queries",
        {
            "datasource": "clinic",
            "sql": "DELETE FROM encounters WHERE id = -1",
            "reason": "tidy up an encounter that was never admitted",
        },
        format="json",
    )
    assert response.status_code == 202, response.content
    ticket_id = response.json()["ticket"]["id"]

    for page in (first, second):  # no reload: the row arrives over the websocket
        page.wait_for_selector(row(page, "pending-tickets", ticket_id), timeout=15_000)
    first.screenshot(path=str(screenshots / "queue.png"), full_page=True)

    first.click(f"{row(first, 'pending-tickets', ticket_id)} a")
    first.wait_for_selector("#review-form")
    assert "DELETE" in first.inner_text("#ticket-sql") and "never admitted" in first.content()
    assert "notes" in first.inner_text("#phi-columns")  # the PHI columns of the rows it would delete
    # A locator wait, not wait_for_function: the site's CSP forbids the eval that a string predicate needs.
    expect(first.locator("#estimate-rows")).not_to_have_class(re.compile(r"\bmuted\b"), timeout=20_000)
    assert first.inner_text("#estimate-rows").strip().isdigit()  # EXPLAIN's estimate, from the gateway
    second.goto(f"{oidc_site.url}/tickets/{ticket_id}/")
    second.wait_for_selector("#ticket-live[data-live=on]")
    first.fill("#comment", "checked: no encounter has id -1, nothing is lost")
    first.screenshot(path=str(screenshots / "ticket.png"), full_page=True)

    needed = Ticket.objects.get(pk=ticket_id).approvals_required
    first.click("button.approve")
    second.wait_for_selector(f"#reviews >> text={alice}", timeout=15_000)  # the other session sees the review
    if needed > 1:
        second.fill("#comment", "agreed")
        second.click("button.approve")
    for page in (first, second):
        page.wait_for_selector("#ticket-status.status-executed", timeout=30_000)
        assert "0 rows" in page.inner_text("#execution")
    first.screenshot(path=str(screenshots / "ticket-executed.png"), full_page=True)

    second.goto(f"{oidc_site.url}/")
    second.wait_for_selector(f"{row(second, 'recent-tickets', ticket_id)} .status-executed")
    assert second.locator(row(second, "pending-tickets", ticket_id)).count() == 0
    assert Ticket.objects.get(pk=ticket_id).status == Status.EXECUTED
    signed_in = AuditEvent.objects.filter(kind=EventKind.AUTH_SUCCEEDED, actor_name=alice, front="web")
    assert signed_in.exists() and signed_in.first().session_id.startswith("web:")  # type: ignore[union-attr]
    for page in (first, second):
        page.context.close()


def test_roles_follow_the_groups_claim_and_local_passwords_are_off(chromium: Any, oidc_site: OidcSite) -> None:
    from django.contrib.auth import get_user_model

    carol = next(name for name in oidc_site.users if name.startswith("carol"))
    dave = next(name for name in oidc_site.users if name.startswith("dave"))
    page = sign_in_with_oidc(chromium, oidc_site, carol)
    users = get_user_model().objects
    assert set(users.get(username=carol).groups.values_list("name", flat=True)) == {"compliance"}
    assert set(users.get(username=dave).groups.values_list("name", flat=True)) == {"reviewer"}  # unknown groups ignored
    page.goto(f"{oidc_site.url}/audit/")
    assert page.locator("#audit-events").count() == 1
    login = page.context.request.post(f"{oidc_site.url}/accounts/login/", form={"username": carol, "password": "x"})
    assert login.status in (403, 404)  # CSRF or disabled: either way no password sign-in
    page.context.close()
