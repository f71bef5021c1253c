"""The ticket page and its review form in real Chromium, under a strict Content-Security-Policy.

A statement held on the wire with bind parameters shows them; the estimate and the masked preview arrive after
the page renders (computed once by the gateway); the form refuses a rejection without a comment before sending
it; success and errors look different; and after an approval the reviewer sees when they approved, not the form.
The web process runs behind a strict CSP (tests/csp_asgi.py: script-src 'self', no inline script), so the page's
script must come from static/approvals/ticket.js. Screenshots go to pytest's tmp_path.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from approvals.models import Review, Status, Ticket
from identity.roles import Role
from tests import services as svc
from tests.factories import agent_client, make_agent, make_user
from tests.services import wait_until

PASSWORD = "correct horse battery"


@dataclass(frozen=True)
class Site:
    url: str


@pytest.fixture(scope="module")
def strict_site(services: Any) -> Iterator[Site]:
    """The web process behind a strict Content-Security-Policy: no inline script or event handler runs. (Styles
    may still be inline: base.html's own style block moves out separately; the ticket page adds none, which
    tests/test_ticket_page.py checks in its HTML.)"""
    port = svc.free_port()
    policy = (
        "default-src 'none'; script-src 'self'; connect-src 'self' "
        f"ws://127.0.0.1:{port}; img-src 'self'; style-src 'self' 'unsafe-inline'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )
    argv = [sys.executable, "-m", "uvicorn", "tests.csp_asgi:application", "--host", "127.0.0.1", "--port", str(port)]
    process = svc.Service("web-csp", argv, {"TEST_CSP": policy}, services.log_dir).start()
    svc.wait_until(lambda: svc.port_open(port) or not process.alive(), 30, what="web to listen")
    assert process.alive(), process.log_tail()
    yield Site(url=f"http://127.0.0.1:{port}")
    process.stop()


def open_signed_in(chromium: Any, site: Site, user: Any, violations: list[str], *, width: int = 1280) -> Any:
    """A browser session signed in with a password; CSP refusals and script errors on ticket pages are collected
    in ``violations`` (other pages are other people's work)."""
    context = chromium.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()

    def note(text: str) -> None:
        if "/tickets/" in page.url:
            violations.append(text)

    page.on("console", lambda message: note(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: note(str(error)))
    page.goto(f"{site.url}/accounts/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}/")
    return page


def hold_over_wire(services: Any, sql: str, params: tuple[Any, ...]) -> Ticket:
    agent, token = make_agent(make_user(Role.ENGINEER, name="owner"))
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as raised:
        conn.execute(sql, params)
    assert raised.value.sqlstate == "HA001"
    return Ticket.objects.get(pk=int(str(raised.value.diag.message_primary).rsplit(" ", 1)[1]))


def test_a_wire_ticket_shows_parameters_estimate_and_preview(chromium, strict_site, services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(services.target.owner_url) as conn:
        current = conn.execute("SELECT dose FROM prescriptions WHERE id = 911").fetchone()[0]
    ticket = hold_over_wire(
        services,
        "/* phigate-reason: dose halved after the renal panel */ UPDATE prescriptions SET dose = %s WHERE id = %b",
        ("2.5 mg once daily", 911),
    )
    violations: list[str] = []
    page = open_signed_in(chromium, strict_site, make_user(Role.REVIEWER), violations)
    page.goto(f"{strict_site.url}/tickets/{ticket.pk}/")
    page.wait_for_selector("#ticket-live[data-live=on]")  # the websocket script ran under the CSP
    page.wait_for_selector("#estimate-rows:not(.muted)", timeout=30_000)  # the estimate arrived
    assert page.inner_text("#estimate-rows").strip() == "1"
    params = page.inner_text("#ticket-params")
    assert "$1" in params and "2.5 mg once daily" in params and "text" in params
    assert "$2" in params and "smallint" in params and "binary" in params and "038f" in params
    assert "dose halved after the renal panel" in page.inner_text("#ticket-reason")
    preview = page.inner_text("#affected-rows")
    assert "911" in preview and current in preview and "2.5 mg once daily" in preview
    page.screenshot(path=str(tmp_path / "ticket-params.png"), full_page=True)
    assert violations == []

    phone = open_signed_in(chromium, strict_site, make_user(Role.REVIEWER), violations, width=390)
    phone.goto(f"{strict_site.url}/tickets/{ticket.pk}/")
    phone.wait_for_selector("#affected-rows")  # kept: the second viewer gets it from the ticket
    phone.screenshot(path=str(tmp_path / "ticket-params-phone.png"), full_page=True)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # nothing wider than the phone
    for value in phone.locator("#ticket-params code").all():  # every value and its bytes in sight, no scrolling
        box = value.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, value.inner_text()
    assert violations == []
    for opened in (page, phone):
        opened.context.close()


def test_the_review_form_in_the_browser(chromium, strict_site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, agent_api = agent_client(make_user(Role.ENGINEER, name="owner"))
    response = agent_api.post(
        "/api/v1/queries", {"datasource": "clinic", "sql": "DELETE FROM scratch WHERE id = 37"}, format="json"
    )
    ticket = Ticket.objects.get(pk=response.json()["ticket"]["id"])
    Ticket.objects.filter(pk=ticket.pk).update(approvals_required=2)
    violations: list[str] = []
    reviewer = make_user(Role.REVIEWER)
    page = open_signed_in(chromium, strict_site, reviewer, violations)
    page.goto(f"{strict_site.url}/tickets/{ticket.pk}/")
    page.wait_for_selector("#ticket-live[data-live=on]")

    page.click("button.reject")  # no comment: refused before anything is sent
    assert page.is_visible("#review-error") and page.get_attribute("#comment", "aria-invalid") == "true"
    assert not Review.objects.filter(ticket=ticket).exists()
    page.screenshot(path=str(tmp_path / "reject-needs-comment.png"), full_page=True)

    page.fill("#comment", "row 37 is referenced by tomorrow's import")
    page.click("button.approve")  # approving needs no comment; this one has one
    page.wait_for_selector(".messages li.success")
    assert page.inner_text(".messages li.success") == f"You approved ticket #{ticket.pk}."
    assert page.locator("#review-form").count() == 0
    assert "You approved this ticket at" in page.inner_text("#my-review")
    assert "approved: “row 37 is referenced" in page.inner_text("#reviews")
    success_colour = page.eval_on_selector(".messages li.success", "e => getComputedStyle(e).backgroundColor")
    page.screenshot(path=str(tmp_path / "approved.png"), full_page=True)

    other = open_signed_in(chromium, strict_site, make_user(Role.REVIEWER), violations)
    other.goto(f"{strict_site.url}/tickets/{ticket.pk}/")
    other.wait_for_selector("#ticket-live[data-live=on]")
    # The server refuses an empty rejection too (a script can be bypassed): sent without the page's check.
    other.evaluate("document.getElementById('review-form').requestSubmit = null")
    other.eval_on_selector("#review-form", "form => { form.noValidate = true; }")
    other.evaluate(
        "(() => { const f = document.getElementById('review-form'); const d = document.createElement('input');"
        " d.type = 'hidden'; d.name = 'decision'; d.value = 'reject'; f.appendChild(d); f.submit(); })()"
    )
    other.wait_for_selector(".messages li.error")
    assert "A rejection needs a comment" in other.inner_text(".messages li.error")
    error_colour = other.eval_on_selector(".messages li.error", "e => getComputedStyle(e).backgroundColor")
    assert error_colour != success_colour
    other.screenshot(path=str(tmp_path / "reject-refused-by-server.png"), full_page=True)
    assert Ticket.objects.get(pk=ticket.pk).status == Status.PENDING
    assert Review.objects.filter(ticket=ticket).count() == 1

    other.fill("#comment", "agreed")
    other.click("button.approve")
    other.wait_for_selector(".messages li.success")
    for opened in (page, other):  # both see it run, live
        opened.wait_for_selector("#ticket-status.status-executed", timeout=30_000)
        assert "1 row" in opened.inner_text("#execution") and "1 rows" not in opened.inner_text("#execution")
        assert opened.locator("#ticket-lookups").count() == 0  # what happened, instead of the estimate
    wait_until(lambda: Ticket.objects.get(pk=ticket.pk).status == Status.EXECUTED, 10, what="executed")
    page.screenshot(path=str(tmp_path / "executed.png"), full_page=True)
    assert violations == []
    for opened in (page, other):
        opened.context.close()
