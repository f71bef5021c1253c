"""The review queue built for triage (issue 14), in real Chromium against the real web process.

- Nothing a URL carries runs as script: the reflected XSS through ``{{ filters_json|safe }}`` is gone, and the
  page's script loads from /static/ and runs under a strict Content-Security-Policy.
- Each pending row carries the first line of its SQL, tables, reasons, who is still needed, an expiry
  countdown, requester and owner; the default order is risk (critical first), then soonest expiry; the
  columns sort server-side through an allowlist.
- "Needs my review" is kept apart from "Waiting on others".
- Rows that arrive live are highlighted and counted in the tab title until the page is seen; a banner shows
  while the live connection is down.
- Risk levels reach the approver rules: a critical ticket keeps the policy's rule for high until there is one
  for critical.

Screenshots at 1280x800 and 390x844 go to pytest's tmp_path, never into the work tree.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from approvals.models import Risk, Ticket
from approvals.rules import StillNeeded, review_refusal, still_needed
from approvals.triage import countdown, statement_preview
from identity.models import ApiToken
from identity.principal import Principal
from identity.roles import Role
from policy.models import ApproverMode, ApproverRule, DataSource, RiskScope
from tests import environment
from tests import services as svc
from tests.factories import agent_client, make_group, make_user, user_client
from tests.queue_browser import (
    PHONE,
    assert_phone_layout,
    foreign_violations,
    held,
    open_context,
    sign_in,
)

pytestmark = pytest.mark.usefixtures("services")
_serial = itertools.count(1)

HOSTILE = '"\'></script><script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def pending_order(page: Any, table: str, ours: list[int]) -> list[int]:
    """Our tickets' ids in the order the table shows them (other tests' tickets share the queue)."""
    ids = page.eval_on_selector_all(f"#{table} tr[data-ticket]", "rows => rows.map(r => Number(r.dataset.ticket))")
    return [ticket_id for ticket_id in ids if ticket_id in ours]


def row(table: str, ticket: Ticket) -> str:
    return f"#{table} tr[data-ticket='{ticket.pk}']"


# --------------------------------------------------------------------------------------------------------------
# 1. No script from the URL; the page's own script under a strict CSP
# --------------------------------------------------------------------------------------------------------------


def test_hostile_values_in_any_parameter_never_run_as_script(chromium: Any, web: Any) -> None:
    """The issue's exploit, ``/?datasource=</script><script>…``, and its cousins in every parameter of the
    queue and the personal pages. Loaded without the test CSP: the templates alone must not let them run."""
    reviewer = make_user(Role.REVIEWER, Role.ENGINEER)
    context = open_context(chromium, web.url, csp=False)
    page = sign_in(context, web.url, reviewer)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    exploit = "</script><script>window.__pwned=1</script>"
    urls = [f"{web.url}/?datasource={quote(exploit)}"]
    for path in ("/", "/reviews/", "/requests/"):
        for parameter in ("datasource", "risk", "age", "sort", "page"):
            urls.append(f"{web.url}{path}?{parameter}={quote(HOSTILE)}")
    urls += [f"{web.url}/?age=%C2%B2", f"{web.url}/?age={'9' * 30}", f"{web.url}/reviews/?page=-1"]  # no 500
    for url in urls:
        response = page.goto(url)
        assert response is not None and response.status == 200, url
        page.wait_for_load_state("load")
        assert page.evaluate("window.__pwned") is None, url
        assert "<script>window.__pwned" not in page.content(), url  # the value is text, not markup
    assert not dialogs
    page.goto(f"{web.url}/?datasource={quote(exploit)}")
    config = page.evaluate("JSON.parse(document.getElementById('queue-config').textContent)")
    assert config["filters"]["datasource"] == exploit  # reaches the script as data, intact
    context.close()


def test_the_queue_script_loads_from_static_and_runs_under_a_strict_csp(chromium: Any, web: Any) -> None:
    reviewer = make_user(Role.REVIEWER)
    context = open_context(chromium, web.url, strict_styles=True)
    page = sign_in(context, web.url, reviewer)
    page.wait_for_selector("#live-state[data-state=live]", timeout=15_000)  # queue.js connected the websocket
    assert page.evaluate("document.querySelector('script[src]').getAttribute('src')").endswith("approvals/queue.js")
    inline = page.evaluate("document.querySelectorAll('script:not([src]):not([type=\"application/json\"])').length")
    handlers = page.evaluate(
        "[...document.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name))"
        ".filter(name => name.startsWith('on'))"
    )
    styled = page.evaluate("document.querySelectorAll('main [style]').length")
    assert (inline, handlers, styled) == (0, [], 0)
    assert foreign_violations(page) == []
    context.close()


# --------------------------------------------------------------------------------------------------------------
# 2. Rows built for triage, in risk-then-expiry order, sortable; phone layout
# --------------------------------------------------------------------------------------------------------------


def test_rows_show_what_a_reviewer_triages_by_in_risk_then_expiry_order(
    chromium: Any, web: Any, tmp_path: Path
) -> None:
    owner = make_user(Role.ENGINEER)
    agent, agent_api = agent_client(owner)
    add = held(agent_api, "ALTER TABLE scratch ADD COLUMN triage_note text", "room for a triage note")
    drop = held(agent_api, "DROP TABLE patients", "the table moved to the archive")
    phi = held(
        agent_api,
        "-- a patient asked us to fix their number\nUPDATE patients\n   SET phone = '555-0100'\n WHERE id = 3",
        "patient called about a wrong phone number",
    )
    bulk = held(agent_api, "DELETE FROM scratch WHERE true", "")
    digest = hashlib.sha256(b"x").hexdigest()
    long_token = held(agent_api, f"DELETE FROM scratch WHERE label = '{digest}{digest}'", "wraps on a phone")
    assert (add.risk, drop.risk, phi.risk, bulk.risk) == (Risk.MODERATE, Risk.CRITICAL, Risk.HIGH, Risk.CRITICAL)
    now = timezone.now()
    for ticket, minutes in ((add, 5), (bulk, 20), (phi, 40), (drop, 50)):
        Ticket.objects.filter(pk=ticket.pk).update(expires_at=now + timedelta(minutes=minutes))
    ours = [add.pk, drop.pk, phi.pk, bulk.pk]

    reviewer = make_user(Role.REVIEWER)
    context = open_context(chromium, web.url)
    page = sign_in(context, web.url, reviewer)
    page.wait_for_selector("#live-state[data-state=live]", timeout=15_000)
    assert pending_order(page, "needs-my-review", ours) == [bulk.pk, drop.pk, phi.pk, add.pk]

    drop_row = page.locator(row("needs-my-review", drop))
    assert drop_row.locator("code.sql-line").inner_text() == "DROP TABLE patients"
    assert "patients" in drop_row.locator(".tables").inner_text()
    assert "the table moved to the archive" in drop_row.locator(".reason").inner_text()
    assert "destroys the table and every row in it" in drop_row.locator(".held-because").inner_text()
    assert drop_row.locator(".needed").inner_text() == "needs 2 more approvals"
    assert drop_row.locator(".badge").inner_text() == "critical"
    assert f"{agent.name} for {owner.username}" in drop_row.locator(".col-requester").inner_text()
    assert drop_row.locator("time.countdown").inner_text() in ("50 min", "49 min")
    phi_row = page.locator(row("needs-my-review", phi))
    assert phi_row.locator("code.sql-line").inner_text() == "UPDATE patients …"  # first line that says something
    assert "writes PHI columns of public.patients: phone" in phi_row.locator(".held-because").inner_text()
    assert phi_row.locator(".needed").inner_text() == "needs 1 more approval"
    page.screenshot(path=str(tmp_path / "queue-1280.png"), full_page=True)

    page.click("#needs-my-review th >> text=Expires in")
    page.wait_for_url("**sort=expiry*")
    assert pending_order(page, "needs-my-review", ours) == [add.pk, bulk.pk, phi.pk, drop.pk]
    assert page.get_attribute("#needs-my-review th[aria-sort]", "aria-sort") == "ascending"
    page.click("#needs-my-review th >> text=Asked")
    page.wait_for_url("**sort=newest*")
    assert pending_order(page, "needs-my-review", ours) == [bulk.pk, phi.pk, drop.pk, add.pk]
    page.goto(f"{web.url}/?sort=-id%3Bdrop")  # not on the allowlist: the default order
    assert pending_order(page, "needs-my-review", ours) == [bulk.pk, drop.pk, phi.pk, add.pk]
    context.close()

    phone = open_context(chromium, web.url, **PHONE)
    page = sign_in(phone, web.url, reviewer)
    page.wait_for_selector("#live-state[data-state=live]", timeout=15_000)
    assert page.locator(row("needs-my-review", long_token)).count() == 1  # a 128-character token: it wraps
    assert_phone_layout(page)
    assert page.locator(".sort-links a.tap").count() == 5  # the header row is hidden: sorting stays reachable
    page.screenshot(path=str(tmp_path / "queue-390.png"), full_page=True)
    phone.close()


def test_a_statement_preview_is_its_first_meaningful_line_cut_at_a_word() -> None:
    assert statement_preview("DROP TABLE patients") == ("DROP TABLE patients", False)
    assert statement_preview("-- why\n\nUPDATE t\n SET a = 1") == ("UPDATE t", True)
    assert statement_preview("select   1,\t2") == ("select 1, 2", False)
    long = "select " + ", ".join(f"column_{n}" for n in range(40))
    text, cut = statement_preview(long)
    assert cut and 60 < len(text) <= 120 and long.startswith(text) and long[len(text)] == " "  # cut at a word
    assert statement_preview("x" * 300)[0] == "x" * 120
    now = timezone.now()
    assert [countdown(now + timedelta(seconds=s), now) for s in (-1, 30, 14 * 60 + 5, 3600, 7500, 5 * 86400)] == [
        "expired",
        "1 min",
        "14 min",
        "1 h",
        "2 h 5 min",
        "5 days",
    ]


# --------------------------------------------------------------------------------------------------------------
# 3. "Needs my review" and "Waiting on others"; who is still needed
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def dba() -> Iterator[Group]:
    """A "dba" approver group with a rule for critical tickets: "1 of dba" (removed afterwards: shared source)."""
    group = make_group("dba")
    rule = ApproverRule.objects.create(
        datasource=DataSource.objects.get(name=environment.DATASOURCE),
        risk=RiskScope.CRITICAL,
        mode=ApproverMode.N_OF,
        count=1,
    )
    rule.groups.set([group])
    yield group
    rule.delete()
    group.delete()


def test_needs_my_review_is_kept_apart_from_waiting_on_others(chromium: Any, web: Any, dba: Group) -> None:
    reviewer = make_user(Role.REVIEWER, Role.ENGINEER)
    _, own_api = agent_client(reviewer)
    mine = held(own_api, "DELETE FROM scratch WHERE id = 41", "my own agent's clean-up")
    _, other_api = agent_client(make_user(Role.ENGINEER))
    index = held(other_api, "CREATE INDEX ON scratch (label)", "faster label search")
    dropped = held(other_api, "DROP TABLE scratch", "scratch is unused")
    plain = held(other_api, "DELETE FROM scratch WHERE id = 42", "duplicate row")
    assert index.approvals_required == 2 and dropped.risk == Risk.CRITICAL
    response = user_client(reviewer).post(
        f"/api/v1/tickets/{index.pk}/reviews", {"decision": "approve", "comment": "fine"}, format="json"
    )
    assert response.status_code == 201, response.content

    context = open_context(chromium, web.url)
    page = sign_in(context, web.url, reviewer)
    page.wait_for_selector("#live-state[data-state=live]", timeout=15_000)
    assert page.locator(row("needs-my-review", plain)).count() == 1
    waiting = {ticket: page.locator(row("waiting-on-others", ticket)) for ticket in (mine, index, dropped)}
    assert all(located.count() == 1 for located in waiting.values())
    assert page.locator("#needs-my-review").locator(f"tr[data-ticket='{mine.pk}']").count() == 0
    assert "you requested this statement" in waiting[mine].locator(".waiting-because").inner_text()
    assert waiting[index].locator(".waiting-because").inner_text() == "you approved it"
    assert waiting[index].locator(".needed").inner_text() == "needs 1 more approval"
    assert f"needs approvers from {dba.name}" in waiting[dropped].locator(".waiting-because").inner_text()
    assert waiting[dropped].locator(".needed").inner_text() == f"needs 2 more, 1 of them from {dba.name}"
    counts = page.eval_on_selector_all("h2 .count", "spans => spans.map(s => Number(s.textContent))")
    assert counts == [page.locator("#needs-my-review tr[data-ticket]").count(),
                      page.locator("#waiting-on-others tr[data-ticket]").count()]  # fmt: skip
    context.close()

    member = make_user(Role.REVIEWER)
    member.groups.add(dba)
    context = open_context(chromium, web.url)
    page = sign_in(context, web.url, member)
    assert page.locator(row("needs-my-review", dropped)).count() == 1  # a dba may review it
    context.close()


def ticket_at(risk: str, approvals_required: int = 1) -> Ticket:
    """A pending ticket made in-process (the rules read only the ticket, its reviews and the policy)."""
    sql = f"-- {next(_serial)}\nDELETE FROM scratch WHERE id = 0"
    return Ticket.objects.create(
        datasource=DataSource.objects.get(name=environment.DATASOURCE),
        owner=make_user(Role.ENGINEER),
        sql=sql,
        sql_sha256=hashlib.sha256(sql.encode()).hexdigest(),
        risk=risk,
        approvals_required=approvals_required,
        expires_at=timezone.now() + timedelta(hours=1),
    )


def test_still_needed_says_how_many_more_and_from_whom() -> None:
    groups = {name: make_group(name) for name in ("dba", "security")}
    datasource = DataSource.objects.get(name=environment.DATASOURCE)
    rule = ApproverRule.objects.create(datasource=datasource, risk=RiskScope.HIGH, mode=ApproverMode.ALL_OF, count=1)
    rule.groups.set(groups.values())
    try:
        ticket = ticket_at(Risk.HIGH, approvals_required=2)
        dba, security = (groups[name].name for name in ("dba", "security"))
        first, second = sorted([dba, security])
        assert str(still_needed(ticket)) == f"needs 2 more: one from each of {first} and {second}"
        approver = make_user(Role.REVIEWER)
        approver.groups.add(groups["dba"])
        ticket.reviews.create(reviewer=approver, decision="approve", sql_sha256=ticket.sql_sha256)
        assert str(still_needed(ticket)) == f"needs 1 more from {security}"
    finally:
        rule.delete()
    assert str(StillNeeded(0)) == "no more approvals needed"
    assert str(StillNeeded(1)) == "needs 1 more approval"
    assert str(StillNeeded(3, 1, ("dba", "ops"))) == "needs 3 more, 1 of them from dba or ops"
    assert str(StillNeeded(2, 2, ("dba",))) == "needs 2 more from dba"


def test_a_critical_ticket_keeps_the_rule_for_high_until_the_policy_names_one_for_critical() -> None:
    """Critical used to be unreachable: what now ranks critical (DROP TABLE, TRUNCATE) ranked high, so a policy's
    "high" rule must keep covering it; otherwise a sharper ranking would loosen who must approve."""
    group = make_group("dba")
    datasource = DataSource.objects.get(name=environment.DATASOURCE)
    high = ApproverRule.objects.create(datasource=datasource, risk=RiskScope.HIGH, mode=ApproverMode.ANY_OF, count=1)
    high.groups.set([group])
    outsider = Principal(human=make_user(Role.REVIEWER))
    try:
        critical = ticket_at(Risk.CRITICAL)
        assert review_refusal(critical, outsider) == (
            f"this data source needs approvers from {group.name} for critical-risk statements"
        )
        critical_rule = ApproverRule.objects.create(
            datasource=datasource, risk=RiskScope.CRITICAL, mode=ApproverMode.ANY_OF, count=1
        )
        critical_rule.groups.set([make_group("security")])
        outsider.human.groups.add(*critical_rule.groups.all())
        assert review_refusal(critical, outsider) is None  # the critical rule wins once it exists
        critical_rule.delete()
    finally:
        high.delete()


# --------------------------------------------------------------------------------------------------------------
# 4. Live: new rows highlighted and counted in the title; a banner while the connection is down
# --------------------------------------------------------------------------------------------------------------


def _wait_for_title(page: Any, expected: str, timeout: float = 5.0) -> None:
    """Poll the title from the test (page.title() needs no eval in the page, which the site's CSP refuses)."""
    deadline = time.monotonic() + timeout
    while page.title() != expected:
        assert time.monotonic() < deadline, f"title {page.title()!r}, expected {expected!r}"
        page.wait_for_timeout(50)


def test_new_rows_are_highlighted_and_counted_in_the_title_until_seen(chromium: Any, web: Any) -> None:
    reviewer = make_user(Role.REVIEWER)
    context = open_context(chromium, web.url)
    page = sign_in(context, web.url, reviewer)
    page.wait_for_selector("#live-state[data-state=live]", timeout=15_000)
    title = page.title()
    assert title == "Review queue · phigate"
    _, agent_api = agent_client(make_user(Role.ENGINEER))
    first = held(agent_api, "CREATE INDEX ON scratch (id, label)", "arrives while the page is open")
    page.wait_for_selector(f"{row('needs-my-review', first)}.is-new", timeout=15_000)
    _wait_for_title(page, f"(1) {title}")
    second = held(agent_api, "DELETE FROM scratch WHERE id = 43", "a second one")
    page.wait_for_selector(f"{row('needs-my-review', second)}.is-new", timeout=15_000)
    _wait_for_title(page, f"(2) {title}")

    page.click("h1")  # the reviewer is back on the page
    assert page.title() == title and page.locator("tr.is-new").count() == 0
    # A change to a row already shown is not a new row. (Reviewed through the web process's API: the test
    # process's own channel layer cannot broadcast while Playwright's event loop runs in this thread.)
    _, token = ApiToken.issue(user=make_user(Role.REVIEWER))
    response = context.request.post(
        f"{web.url}/api/v1/tickets/{first.pk}/reviews",
        headers={"Authorization": f"Bearer {token}"},
        data={"decision": "approve", "comment": "ok"},
    )
    assert response.status == 201, response.text()
    # Locator waits, not wait_for_function: a string predicate needs eval, which the site's CSP refuses.
    page.locator(f"tr[data-ticket='{first.pk}'] td.approvals", has_text="1 of 2").first.wait_for(timeout=15_000)
    assert page.title() == title and page.locator("tr.is-new").count() == 0
    context.close()


@pytest.fixture
def restartable_web(services: Any) -> Iterator[dict[str, Any]]:
    """A web process of this test's own, on a port it can come back to."""
    port = svc.free_port()
    process, _ = svc.web(services.log_dir, name="web-banner", port=port)
    holder = {"process": process, "port": port, "url": f"http://127.0.0.1:{port}"}
    yield holder
    holder["process"].stop()


def test_a_banner_shows_while_the_live_connection_is_down(
    chromium: Any, restartable_web: dict[str, Any], services: Any, tmp_path: Path
) -> None:
    url = restartable_web["url"]
    context = open_context(chromium, url)
    page = sign_in(context, url, make_user(Role.REVIEWER))
    page.wait_for_selector("#live-state[data-state=live]", timeout=15_000)
    assert page.locator("#live-banner").is_hidden()

    restartable_web["process"].stop()
    page.wait_for_selector("#live-banner:not([hidden])", timeout=15_000)
    assert "disconnected" in page.inner_text("#live-banner")
    assert page.get_attribute("#live-state", "data-state") == "closed"
    page.screenshot(path=str(tmp_path / "queue-disconnected.png"))

    restartable_web["process"], _ = svc.web(services.log_dir, name="web-banner", port=restartable_web["port"])
    page.wait_for_selector("#live-state[data-state=live]", timeout=30_000)
    assert page.locator("#live-banner").is_hidden()
    context.close()
