"""The ticket page and its review form, in the server's HTML (the browser tests drive the same in Chromium).

A reviewer who approved sees when, not the form; a rejection needs a comment; the comment survives the sign-in a
review may require; success and errors look different; the words are right ("rejected", "1 row", "just now");
after execution the page shows what happened (row count, duration, the masked result) instead of the estimate;
and the page is ready for a strict Content-Security-Policy (no inline script, handlers or style attributes).
"""

from __future__ import annotations

from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import psycopg
import pytest
import time_machine
from django.contrib.staticfiles import finders
from django.test import Client, override_settings
from django.utils import timezone

from approvals.models import Review, Status, Ticket
from identity.roles import Role
from tests.factories import agent_client, make_user
from tests.services import wait_until

pytestmark = pytest.mark.usefixtures("services")
PASSWORD = "correct horse battery"


def held(sql: str, approvals_required: int = 1) -> Ticket:
    _, agent_api = agent_client(make_user(Role.ENGINEER, name="owner"))
    response = agent_api.post("/api/v1/queries", {"datasource": "clinic", "sql": sql}, format="json")
    assert response.status_code == 202, response.json()
    if approvals_required != 1:
        Ticket.objects.filter(pk=response.json()["ticket"]["id"]).update(approvals_required=approvals_required)
    return Ticket.objects.get(pk=response.json()["ticket"]["id"])


def browser(user: Any) -> Client:
    """A password sign-in through the login page, as a person does (it stamps the sign-in time)."""
    client = Client()
    response = client.post("/accounts/login/", {"username": user.username, "password": PASSWORD})
    assert response.status_code == 302, response.content
    return client


def review(client: Client, ticket: Ticket, decision: str, comment: str = "") -> Any:
    return client.post(f"/tickets/{ticket.pk}/review", {"decision": decision, "comment": comment}, follow=True)


def messages_of(html: str) -> list[tuple[str, str]]:
    """(level class, text) of each message the page shows."""
    found: list[tuple[str, str]] = []

    class Messages(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.level: str | None = None

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "li" and dict(attrs).get("role") in ("alert", "status"):
                classes = (dict(attrs).get("class") or "").split()
                # the level is the class "message-<level>" names (the bare level may stand beside it for styling)
                self.level = next((c.removeprefix("message-") for c in classes if c.startswith("message-")), "")

        def handle_data(self, data: str) -> None:
            if self.level is not None and data.strip():
                found.append((self.level, data.strip()))
                self.level = None

    Messages().feed(html)
    return found


def test_a_reviewer_who_approved_sees_when_instead_of_the_form() -> None:
    ticket = held("DELETE FROM scratch WHERE id = 31", approvals_required=2)
    reviewer = browser(make_user(Role.REVIEWER))
    page = review(reviewer, ticket, "approve", "checked the id").content.decode()
    assert ("success", f"You approved ticket #{ticket.pk}.") in messages_of(page)
    assert 'id="review-form"' not in page and 'value="approve"' not in page
    assert 'id="my-review"' in page and "You approved this ticket at" in page and "checked the id" in page
    assert Ticket.objects.get(pk=ticket.pk).status == Status.PENDING  # still waiting for the second reviewer
    other = browser(make_user(Role.REVIEWER)).get(f"/tickets/{ticket.pk}/").content.decode()
    assert 'id="review-form"' in other  # who has not reviewed yet still gets the form


def test_reject_without_a_comment_is_refused_with_a_clear_error() -> None:
    ticket = held("DELETE FROM scratch WHERE id = 32")
    reviewer = browser(make_user(Role.REVIEWER))
    for comment in ("", "   "):
        page = review(reviewer, ticket, "reject", comment).content.decode()
        refusal = "A rejection needs a comment: tell the requester why, so they can fix it."
        assert ("error", refusal) in messages_of(page)
        assert 'id="review-form"' in page
    assert not Review.objects.filter(ticket=ticket).exists()
    assert Ticket.objects.get(pk=ticket.pk).status == Status.PENDING
    page = review(reviewer, ticket, "reject", "wrong row: 32 is still in use").content.decode()
    assert ("success", f"You rejected ticket #{ticket.pk}.") in messages_of(page)
    assert "rejectd" not in page and "rejected: “wrong row: 32 is still in use”" in page
    assert Ticket.objects.get(pk=ticket.pk).status == Status.REJECTED


def test_a_submission_without_a_decision_keeps_the_comment() -> None:
    ticket = held("DELETE FROM scratch WHERE id = 35")
    reviewer = browser(make_user(Role.REVIEWER))
    page = reviewer.post(
        f"/tickets/{ticket.pk}/review", {"decision": "maybe", "comment": "half written"}, follow=True
    ).content.decode()
    assert messages_of(page) == [("error", "Choose approve or reject.")]
    assert ">half written</textarea>" in page
    assert not Review.objects.filter(ticket=ticket).exists()


def test_a_conflict_is_an_error_not_a_success() -> None:
    ticket = held("DELETE FROM scratch WHERE id = 33")
    first, second = browser(make_user(Role.REVIEWER)), browser(make_user(Role.REVIEWER))
    form = second.get(f"/tickets/{ticket.pk}/")
    assert 'id="review-form"' in form.content.decode()
    review(first, ticket, "reject", "no")
    page = review(second, ticket, "approve", "yes").content.decode()
    levels = [level for level, _ in messages_of(page)]
    assert levels == ["error"] and "no longer pending" in page


@override_settings(REVIEW_REAUTH_SECONDS=300)
def test_the_comment_survives_the_sign_in_a_review_needs() -> None:
    ticket = held("DELETE FROM scratch WHERE id = 34")
    user = make_user(Role.REVIEWER)
    client = browser(user)
    comment = "Checked with the ward: row 34 is a duplicate of 35 <b>keep 35</b>"
    with time_machine.travel(timezone.now() + timedelta(seconds=301), tick=False):
        response = client.post(f"/tickets/{ticket.pk}/review", {"decision": "approve", "comment": comment})
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
        assert not Review.objects.filter(ticket=ticket).exists()
        signed_in = client.post(
            f"/accounts/login/?next=/tickets/{ticket.pk}/", {"username": user.username, "password": PASSWORD}
        )
        assert signed_in.status_code == 302 and signed_in["Location"] == f"/tickets/{ticket.pk}/"
        page = client.get(f"/tickets/{ticket.pk}/").content.decode()
    textarea = page[page.index('<textarea id="comment"') : page.index("</textarea>")]
    assert "Checked with the ward: row 34 is a duplicate of 35 &lt;b&gt;keep 35&lt;/b&gt;" in textarea  # escaped
    assert 'value="approve" data-draft="chosen"' in page
    assert any(level == "info" and "Your comment was kept" in text for level, text in messages_of(page))
    again = client.get(f"/tickets/{ticket.pk}/").content.decode()  # restored once, not forever
    assert comment not in again
    other = browser(make_user(Role.REVIEWER)).get(f"/tickets/{ticket.pk}/").content.decode()
    assert "row 34 is a duplicate" not in other  # nobody else's draft


def test_words_just_now_rejected_and_one_row_after_execution(services) -> None:  # type: ignore[no-untyped-def]
    ticket = held("UPDATE patients SET phone = phone WHERE id = 12 RETURNING id, full_name, ssn")
    with psycopg.connect(services.target.owner_url) as conn:
        name, ssn = conn.execute("SELECT full_name, ssn FROM patients WHERE id = 12").fetchone()
    reviewer = browser(make_user(Role.REVIEWER))
    before = reviewer.get(f"/tickets/{ticket.pk}/").content.decode()
    assert "just now" in before and "0 minutes" not in before
    assert "Once approved, the executor runs exactly these bytes, once." in before
    assert 'id="ticket-lookups"' in before  # before it runs: the estimate and the preview
    review(reviewer, ticket, "approve", "phone unchanged, fine")
    wait_until(lambda: Ticket.objects.get(pk=ticket.pk).status == Status.EXECUTED, 30, what="execution")
    page = reviewer.get(f"/tickets/{ticket.pk}/").content.decode()
    execution = page[page.index('id="execution"') : page.index("</section>", page.index('id="execution"'))]
    assert "<strong>1 row</strong>" in execution and "1 rows" not in page and "(UPDATE 1)" in execution
    assert " ms." in execution  # how long it took
    assert "will run" not in page and 'id="ticket-lookups"' not in page  # what happened, not the estimate
    assert "Ran once" in page
    result = execution[execution.index('id="execution-result"') :]
    assert "***" + ssn[-4:] in result and ssn not in page and name not in page  # masked as the agent sees it
    assert "approved: “phone unchanged, fine”" in page and "approved" in page and "approved d" not in page


class _Inline(HTMLParser):
    """What a strict CSP refuses: inline scripts, on* handler attributes, style attributes (inside the ticket)."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts = 0
        self.handlers: list[str] = []
        self.styles: list[str] = []
        self.scripts: list[str] = []
        self.depth = 0  # inside <article id="ticket">

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script":
            if named.get("src"):
                self.scripts.append(str(named["src"]))
            elif named.get("type") != "application/json":
                self.inline_scripts += 1
        if tag == "article" and named.get("id") == "ticket":
            self.depth = 1
        elif self.depth and tag not in ("br", "input", "img", "meta", "link"):
            self.depth += 1
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        if self.depth and "style" in named:
            self.styles.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.depth -= 1


def test_the_page_is_ready_for_a_strict_content_security_policy() -> None:
    ticket = held("DELETE FROM scratch WHERE id = 36")
    page = browser(make_user(Role.REVIEWER)).get(f"/tickets/{ticket.pk}/").content.decode()
    found = _Inline()
    found.feed(page)
    assert found.inline_scripts == 0 and found.handlers == [] and found.styles == []
    assert "/static/approvals/ticket.js" in found.scripts
    assert "/static/approvals/ticket.css" in page
    for asset in ("approvals/ticket.js", "approvals/ticket.css"):
        # Found where the web process serves static files from (phigate/asgi.py; the browser tests load them
        # through the real server).
        assert finders.find(asset), asset
