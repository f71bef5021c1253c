"""Compliance pages: audit search, session replay of a real wire session, evidence export with progress."""

from __future__ import annotations

import contextlib
import io
import time
import zipfile
from urllib.parse import quote

import psycopg
import pytest
from django.test import Client
from playwright.sync_api import expect

from audit.models import AuditEvent, EventKind, EvidenceExport, ExportStatus
from audit.statement_text import mask_literals
from identity.roles import Role
from tests.factories import make_agent, make_user

pytestmark = pytest.mark.usefixtures("services")


def browser(user: object | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)  # type: ignore[arg-type]
    return client


@pytest.fixture
def people() -> dict[str, object]:
    """A requester (an engineer whose agent works), a reviewer, an outsider and a compliance officer."""
    return {
        "requester": make_user(Role.ENGINEER),
        "reviewer": make_user(Role.REVIEWER),
        "outsider": make_user(),
        "compliance": make_user(Role.COMPLIANCE),
    }


@pytest.fixture
def wire_session(services, people) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """A real wire session: a masked PHI read, a denied COPY, a held DELETE, then a plain read."""
    agent, token = make_agent(people["requester"])
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    with psycopg.connect(services.target.owner_url) as owner:
        true_ssn = owner.execute("SELECT ssn FROM patients WHERE id = 2").fetchone()[0]
    statements = [
        "SELECT id, ssn, full_name FROM patients WHERE id = 2",
        "COPY scratch TO PROGRAM 'true'",
        "DELETE FROM scratch WHERE id = 49",
        "SELECT count(*) AS scratch_rows FROM scratch",
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in statements:
            with contextlib.suppress(psycopg.Error):  # the denied and the held one answer with an error
                conn.execute(sql).fetchall()
    deadline = time.monotonic() + 10  # "executed" records ride along with the gateway's next audit batch
    while AuditEvent.objects.filter(agent=agent, kind=EventKind.QUERY_EXECUTED).count() < 2:
        assert time.monotonic() < deadline, "the reads' executed records never arrived"
        time.sleep(0.05)
    submitted = AuditEvent.objects.filter(agent=agent, kind=EventKind.QUERY_SUBMITTED).first()
    assert submitted is not None and submitted.front == "wire" and submitted.session_id
    return {"agent": agent, "session": submitted.session_id, "statements": statements, "true_ssn": true_ssn}


def test_only_compliance_officers_see_the_audit_pages(people, wire_session) -> None:  # type: ignore[no-untyped-def]
    session = wire_session["session"]
    pages = ["/audit/", f"/audit/sessions/{session}/"]
    for role in ("requester", "reviewer", "outsider"):
        for page in pages:
            assert browser(people[role]).get(page).status_code == 403, (role, page)
        assert browser(people[role]).post("/audit/exports/", {"since": "2026-01-01"}).status_code == 403
    for page in pages:
        response = browser(None).get(page)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
        assert browser(people["compliance"]).get(page).status_code == 200


def test_search_page_filters_and_is_audited(people, wire_session) -> None:  # type: ignore[no-untyped-def]
    officer = people["compliance"]
    client = browser(officer)
    page = client.get("/audit/", {"agent": wire_session["agent"].name, "decision": "denied"})
    html = page.content.decode()
    assert "COPY scratch TO PROGRAM" in html and "DELETE FROM scratch" not in html
    assert f"/audit/sessions/{wire_session['session']}/" in html
    searched = AuditEvent.objects.filter(kind=EventKind.AUDIT_SEARCHED, actor=officer).get()
    assert searched.front == "web" and searched.details["filters"]["decision"] == "denied"
    assert searched.session_id.startswith("web:") and client.session.session_key not in searched.session_id
    bad = browser(officer).get("/audit/", {"decision": "maybe"})
    assert bad.status_code == 200 and "decision" in bad.content.decode()


def test_replay_of_a_wire_session_shows_statements_in_order_with_decisions_and_masked_previews(
    people, wire_session
) -> None:  # type: ignore[no-untyped-def]
    officer = people["compliance"]
    html = browser(officer).get(f"/audit/sessions/{wire_session['session']}/").content.decode()
    # Statements are shown with their literals masked (audit.statement_text; revealing them is a separate act).
    positions = [html.index((mask_literals(sql) or "").replace("'", "&#x27;")) for sql in wire_session["statements"]]
    assert positions == sorted(positions), "statements out of order"
    for verdict in ("decision-allowed", "decision-denied", "decision-held"):
        assert verdict in html
    read = html[positions[0] : positions[1]]
    assert "ssn → partial" in read or "ssn → redact" in read or "ssn →" in read  # the mask applied, per column
    assert '<table class="preview">' in read  # the masked preview of what was sent
    assert str(wire_session["true_ssn"]) not in html  # never the real value
    count_step = html[positions[3] :]
    assert "scratch_rows" in count_step and "1 rows" in count_step
    replayed = AuditEvent.objects.filter(kind=EventKind.AUDIT_REPLAYED, actor=officer).get()
    assert replayed.details["session"] == wire_session["session"]


def test_replay_links_from_the_ticket_page_for_compliance_only(people, wire_session) -> None:  # type: ignore[no-untyped-def]
    ticket_event = AuditEvent.objects.filter(agent=wire_session["agent"], kind=EventKind.TICKET_CREATED).get()
    url = f"/tickets/{ticket_event.ticket_id}/"
    assert f"/audit/sessions/{wire_session['session']}/" in browser(people["compliance"]).get(url).content.decode()
    assert "/audit/sessions/" not in browser(people["reviewer"]).get(url).content.decode()


def test_an_export_runs_in_the_worker_with_progress_and_only_its_requester_downloads_it(people) -> None:  # type: ignore[no-untyped-def]
    officer, other_officer = people["compliance"], make_user(Role.COMPLIANCE)
    response = browser(officer).post("/audit/exports/", {"since": "2020-01-01", "until": "2999-01-01"})
    assert response.status_code == 302
    export = EvidenceExport.objects.of(officer).get()
    assert response["Location"] == f"/audit/exports/{export.pk}/"
    assert "export-progress" in browser(officer).get(response["Location"]).content.decode()
    deadline = time.monotonic() + 120
    progress = {}
    while time.monotonic() < deadline:
        progress = browser(officer).get(f"/audit/exports/{export.pk}/progress").json()
        if progress["status"] in (ExportStatus.DONE, ExportStatus.FAILED):
            break
        time.sleep(0.3)
    assert progress["status"] == ExportStatus.DONE, progress
    assert progress["progress"] == 100 and progress["download"] and progress["chain_ok"]
    for stranger in (other_officer, people["reviewer"]):
        assert browser(stranger).get(f"/audit/exports/{export.pk}/download").status_code in (403, 404)
    download = browser(officer).get(f"/audit/exports/{export.pk}/download")
    assert download.status_code == 200
    bundle = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))  # type: ignore[attr-defined]
    assert "manifest.sig" in bundle.namelist()
    exported = AuditEvent.objects.filter(kind=EventKind.AUDIT_EXPORTED, actor=officer).get()
    assert exported.front == "web"


def sign_in(chromium, web, user) -> object:  # type: ignore[no-untyped-def]
    page = chromium.new_context().new_page()
    page.goto(f"{web.url}/accounts/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", "correct horse battery")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)  # signed in: `/` lands each role on its page
    return page


def test_replay_plays_step_by_step_and_in_time_in_a_real_browser(chromium, web, people, wire_session) -> None:  # type: ignore[no-untyped-def]
    page = sign_in(chromium, web, people["compliance"])
    page.goto(f"{web.url}/audit/sessions/{wire_session['session']}/")
    steps = page.locator("#timeline .step")
    total = steps.count()
    assert total >= 4
    visible = page.locator("#timeline .step:visible")
    assert visible.count() == total  # everything shown until playback starts
    page.click("#replay-step")
    assert visible.count() == 1
    assert "auth.succeeded" in visible.first.inner_text()  # the session opens with the sign-in
    page.click("#replay-step")
    assert visible.count() == 2
    assert "SELECT id, ssn, full_name" in visible.nth(1).inner_text()
    page.select_option("#replay-speed", "instant")
    page.click("#replay-play")  # from the current step on, without waiting out the session's own pauses
    # A locator wait, not wait_for_function: the site's CSP forbids the eval that a string predicate needs.
    expect(page.locator("#timeline .step:not(.hidden)")).to_have_count(total, timeout=30_000)
    expect(page.locator("#replay-position")).to_contain_text(f"step {total} of {total}")
    assert str(wire_session["true_ssn"]) not in page.content()
    page.context.close()
