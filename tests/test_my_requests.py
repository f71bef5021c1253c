""" "My requests" and "My reviews" (issue 14), in real Chromium against the real web process, gateway and worker.

- An agent owner sees the tickets of their agents (and their own), with status, what each still needs, and once
  executed the row count and the stored result, masked as it was for whoever asked: never a PHI value. Reading
  it is a ``ticket.result_read`` event, as on the API.
- Cancel (POST with CSRF) uses the API's own transition: the ticket is cancelled once and the audit trail has
  its ``ticket.cancelled`` event naming the person. Nobody else can cancel or read it.
- A reviewer sees every ticket they reviewed: decision, comment, when, and the ticket's outcome, newest first,
  paginated.
- Both pages, and the result, are cards on a 390x844 phone.

Screenshots at 1280x800 and 390x844 go to pytest's tmp_path, never into the work tree.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.test import Client
from django.utils import timezone

from approvals.models import Decision, Review, Status, Ticket
from audit.models import AuditEvent, EventKind
from identity.roles import Role
from policy.models import DataSource
from tests import environment
from tests import services as svc
from tests.factories import agent_client, make_user, scratch_row, user_client
from tests.queue_browser import PASSWORD, PHONE, assert_phone_layout, foreign_violations, held, open_context, sign_in

pytestmark = pytest.mark.usefixtures("services")

RETURNING_PHI = "UPDATE patients SET phone = phone WHERE id = 5 RETURNING id, ssn, full_name"


def executed(ticket: Ticket) -> Ticket:
    """Approve through the API and wait for the real worker to run it."""
    response = user_client(make_user(Role.REVIEWER)).post(
        f"/api/v1/tickets/{ticket.pk}/reviews", {"decision": "approve", "comment": "ok"}, format="json"
    )
    assert response.status_code == 201, response.content
    svc.wait_until(
        lambda: Ticket.objects.get(pk=ticket.pk).status in (Status.EXECUTED, Status.FAILED), 30, what="execution"
    )
    done = Ticket.objects.get(pk=ticket.pk)
    assert done.status == Status.EXECUTED, done.error
    return done


def logged_in(user: Any) -> Client:
    client = Client(enforce_csrf_checks=True)
    token = client.get("/accounts/login/").cookies["csrftoken"].value
    response = client.post(
        "/accounts/login/", {"username": user.username, "password": PASSWORD, "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302, response.content
    return client


def test_an_owner_sees_results_masked_and_cancels_a_pending_ticket(
    chromium: Any, web: Any, services: Any, tmp_path: Path
) -> None:
    owner = make_user(Role.ENGINEER)
    agent, agent_api = agent_client(owner)
    done = executed(held(agent_api, RETURNING_PHI, "check the phone of patient 5"))
    waiting = held(agent_api, "DELETE FROM scratch WHERE id = 44", "an old scratch row")
    _, stranger_api = agent_client(make_user(Role.ENGINEER))
    strangers = held(stranger_api, "DELETE FROM scratch WHERE id = 46", "not the owner's")
    with psycopg.connect(services.target.owner_url) as conn:
        ssn, full_name = conn.execute("SELECT ssn, full_name FROM patients WHERE id = 5").fetchone()  # type: ignore[misc]

    context = open_context(chromium, web.url)
    page = sign_in(context, web.url, owner)
    page.goto(f"{web.url}/requests/")
    rows = page.locator("#my-requests tr[data-ticket]")
    assert sorted(int(n) for n in rows.evaluate_all("rows => rows.map(r => r.dataset.ticket)")) == sorted(
        [done.pk, waiting.pk]
    )  # the owner's agent's tickets, nobody else's
    executed_row = page.locator(f"#my-requests tr[data-ticket='{done.pk}']")
    assert executed_row.locator(".rowcount").inner_text() == "1 row"
    assert agent.name in executed_row.inner_text()
    pending_row = page.locator(f"#my-requests tr[data-ticket='{waiting.pk}']")
    assert "needs 1 more approval" in pending_row.locator(".needed").inner_text()
    assert executed_row.locator("button.cancel").count() == 0 and pending_row.locator("button.cancel").count() == 1
    page.screenshot(path=str(tmp_path / "my-requests-1280.png"), full_page=True)

    page.click(f"#my-requests tr[data-ticket='{done.pk}'] a.result-link")
    page.wait_for_selector("#result-rows")
    assert "1 row" in page.inner_text("#result-summary")
    cells = page.eval_on_selector_all("#result-rows td", "cells => cells.map(c => c.textContent.trim())")
    assert cells[0] == "5" and len(cells) == 3
    assert ssn not in page.content() and full_name not in page.content()  # masked as it was for the agent
    assert cells[1] != ssn and cells[1].endswith(ssn[-4:])  # the agent's mask for an SSN: the last four
    read = AuditEvent.objects.filter(kind=EventKind.TICKET_RESULT_READ, ticket_id=done.pk, actor=owner)
    assert read.count() == 1 and read.get().front == "web"
    page.screenshot(path=str(tmp_path / "my-request-result-1280.png"), full_page=True)

    page.goto(f"{web.url}/requests/")
    page.click(f"#my-requests tr[data-ticket='{waiting.pk}'] button.cancel")
    page.wait_for_selector(f"#my-requests tr[data-ticket='{waiting.pk}'][data-status=cancelled]")
    assert f"Ticket #{waiting.pk} was cancelled." in page.inner_text(".messages")
    assert page.locator(f"#my-requests tr[data-ticket='{waiting.pk}'] button.cancel").count() == 0
    assert Ticket.objects.get(pk=waiting.pk).status == Status.CANCELLED
    cancelled = AuditEvent.objects.filter(kind=EventKind.TICKET_CANCELLED, ticket_id=waiting.pk)
    assert cancelled.count() == 1 and cancelled.get().actor == owner and cancelled.get().front == "web"
    assert foreign_violations(page) == []
    context.close()

    # Cancel is a POST with CSRF, for the requester only; results are the requester's only.
    client = logged_in(owner)
    client.get("/requests/")
    token = client.cookies["csrftoken"].value
    assert client.post(f"/requests/{strangers.pk}/cancel").status_code == 403  # no CSRF token
    assert client.post(f"/requests/{strangers.pk}/cancel", {"csrfmiddlewaretoken": token}).status_code == 404
    assert client.get(f"/requests/{strangers.pk}/cancel").status_code == 405
    assert client.get(f"/requests/{strangers.pk}/result").status_code == 404
    assert Ticket.objects.get(pk=strangers.pk).status == Status.PENDING
    again = client.post(f"/requests/{waiting.pk}/cancel", {"csrfmiddlewaretoken": token}, follow=True)
    assert b"no longer pending" in again.content  # cancelled once; the second try changes nothing
    assert AuditEvent.objects.filter(kind=EventKind.TICKET_CANCELLED, ticket_id=waiting.pk).count() == 1
    assert client.get(f"/requests/{waiting.pk}/result").status_code == 409
    reviewer = logged_in(make_user(Role.REVIEWER))
    assert reviewer.get(f"/requests/{done.pk}/result").status_code == 404  # reviewers read it on the ticket page
    assert Client().get("/requests/").status_code == 302  # signed out: to the sign-in page

    phone = open_context(chromium, web.url, **PHONE)
    page = sign_in(phone, web.url, owner)
    for path in ("/requests/", f"/requests/{done.pk}/result"):
        page.goto(f"{web.url}{path}")
        assert_phone_layout(page)
    page.screenshot(path=str(tmp_path / "my-request-result-390.png"), full_page=True)
    page.goto(f"{web.url}/requests/")
    page.screenshot(path=str(tmp_path / "my-requests-390.png"), full_page=True)
    phone.close()


def test_a_reviewer_sees_their_decisions_and_what_came_of_them(chromium: Any, web: Any, tmp_path: Path) -> None:
    reviewer = make_user(Role.REVIEWER)
    _, agent_api = agent_client(make_user(Role.ENGINEER))
    approved = held(agent_api, f"DELETE FROM scratch WHERE id = {scratch_row()}", "")
    rejected = held(agent_api, "DROP TABLE encounters", "")
    api = user_client(reviewer)
    comment = "checked: row 47 is a duplicate of 46, nothing else goes"
    assert (
        api.post(
            f"/api/v1/tickets/{approved.pk}/reviews", {"decision": "approve", "comment": comment}, format="json"
        ).status_code
        == 201
    )
    svc.wait_until(lambda: Ticket.objects.get(pk=approved.pk).status == Status.EXECUTED, 30, what="execution")
    assert (
        api.post(
            f"/api/v1/tickets/{rejected.pk}/reviews",
            {"decision": "reject", "comment": "no: encounters are still in use"},
            format="json",
        ).status_code
        == 201
    )

    context = open_context(chromium, web.url)
    page = sign_in(context, web.url, reviewer)
    page.goto(f"{web.url}/reviews/")
    order = page.eval_on_selector_all("#my-reviews tr[data-ticket]", "rows => rows.map(r => Number(r.dataset.ticket))")
    assert order == [rejected.pk, approved.pk]  # newest first
    first = page.locator(f"#my-reviews tr[data-ticket='{rejected.pk}']")
    assert first.locator(".decision").inner_text() == "rejected"
    assert first.locator(".comment").inner_text() == "no: encounters are still in use"
    assert first.locator(".outcome").inner_text() == "rejected"
    assert "DROP TABLE encounters" in first.locator("code.sql-line").inner_text()
    second = page.locator(f"#my-reviews tr[data-ticket='{approved.pk}']")
    assert second.locator(".decision").inner_text() == "approved"
    assert second.locator(".comment").inner_text() == comment
    assert second.locator(".outcome").inner_text() == "executed" and "1 row" in second.inner_text()
    assert second.locator("time").get_attribute("datetime")
    page.screenshot(path=str(tmp_path / "my-reviews-1280.png"), full_page=True)
    context.close()

    phone = open_context(chromium, web.url, **PHONE)
    page = sign_in(phone, web.url, reviewer)
    page.goto(f"{web.url}/reviews/")
    assert_phone_layout(page)
    page.screenshot(path=str(tmp_path / "my-reviews-390.png"), full_page=True)
    phone.close()


def test_my_reviews_is_paginated_newest_first(chromium: Any, web: Any) -> None:
    reviewer, owner = make_user(Role.REVIEWER), make_user(Role.ENGINEER)
    datasource = DataSource.objects.get(name=environment.DATASOURCE)
    start = timezone.now() - timedelta(hours=3)
    made = []
    for n in range(23):
        sql = f"DELETE FROM scratch WHERE id = {1000 + n}"
        ticket = Ticket.objects.create(
            datasource=datasource,
            owner=owner,
            sql=sql,
            sql_sha256=hashlib.sha256(sql.encode()).hexdigest(),
            risk="moderate",
            status=Status.REJECTED,
            created_at=start,
            expires_at=start + timedelta(hours=1),
        )
        Review.objects.create(
            ticket=ticket,
            reviewer=reviewer,
            decision=Decision.REJECT,
            comment=f"no {n}",
            sql_sha256=ticket.sql_sha256,
            created_at=start + timedelta(minutes=n),
        )
        made.append(ticket.pk)
    newest_first = made[::-1]

    phone = open_context(chromium, web.url, **PHONE)
    page = sign_in(phone, web.url, reviewer)
    page.goto(f"{web.url}/reviews/")
    shown = page.eval_on_selector_all("#my-reviews tr[data-ticket]", "rows => rows.map(r => Number(r.dataset.ticket))")
    assert shown == newest_first[:20]
    assert "page 1 of 2" in page.inner_text(".pager")
    assert_phone_layout(page)
    page.click(".pager a[rel=next]")
    page.wait_for_url("**page=2")
    shown = page.eval_on_selector_all("#my-reviews tr[data-ticket]", "rows => rows.map(r => Number(r.dataset.ticket))")
    assert shown == newest_first[20:]
    phone.close()
