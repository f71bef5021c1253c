"""The activity review in real Chromium, under the site's own Content-Security-Policy: an officer marks every
finding of a period, signs it off and finds it signed off in the list; the overdue count in the navigation
bar; both pages at desktop (1280x800) and phone (390x844) sizes, with screenshots under the test's tmp_path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from audit.activity_review import refresh_findings
from audit.models import AuditEvent, EventKind, ReviewPeriod
from identity.roles import Role
from tests.browsing import browser_context, violations
from tests.factories import make_user
from tests.review_activity import activity_period

pytestmark = pytest.mark.usefixtures("services")

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _fits(page: Any, width: int) -> None:
    assert page.evaluate("document.scrollingElement.scrollWidth") <= width, "the page scrolls sideways"


def test_an_officer_marks_every_finding_signs_off_and_sees_it_in_the_list(
    chromium: Any, web: Any, tmp_path: Path
) -> None:
    activity = activity_period(weeks_ago=3)  # ended more than a week ago: overdue until signed off
    period = activity.period
    refresh_findings(period)
    total = period.findings.count()
    assert total >= 6
    officer = make_user(Role.COMPLIANCE, name="officer")
    context = browser_context(chromium, web.url, officer, viewport=DESKTOP)
    page = context.new_page()
    try:
        page.goto(f"{web.url}/audit/reviews/")
        row = page.locator(f'tr[data-period="{period.pk}"]')
        expect(row).to_have_attribute("data-status", "overdue")
        expect(page.locator("#overdue")).to_contain_text(activity.datasource)
        expect(page.locator(".site-nav a", has_text="Reviews").locator(".nav-alert")).to_contain_text("overdue")
        page.screenshot(path=str(tmp_path / "reviews-desktop.png"), full_page=True)

        row.get_by_role("link", name=activity.datasource).click()
        expect(page.locator("article.finding")).to_have_count(total)
        expect(page.locator("#sign-off-blockers")).to_contain_text("not yet marked")
        page.screenshot(path=str(tmp_path / "review-desktop.png"), full_page=True)
        for index in range(total):
            finding = page.locator('article.finding[data-disposition="pending"]').first
            finding_id = finding.get_attribute("data-finding")
            choice = "Follow-up" if index == 0 else "Explained"
            finding.get_by_label(choice).check()
            finding.get_by_label("Note").fill(f"checked with the agent's owner ({index})")
            finding.get_by_role("button", name="Save").click()
            marked = page.locator(f"#finding-{finding_id}")
            expect(marked).not_to_have_attribute("data-disposition", "pending")
            expect(page.locator(".messages")).to_contain_text("Finding marked")
        expect(page.locator("#review-counts")).to_contain_text(f"{total - 1} explained, 1 follow-up, 0 unmarked")
        page.screenshot(path=str(tmp_path / "review-marked-desktop.png"), full_page=True)

        page.get_by_role("button", name="Sign off this review").click()
        expect(page).to_have_url(re.compile(r"/audit/reviews/$"))
        expect(page.locator(".messages")).to_contain_text("signed off")
        expect(page.locator(f'tr[data-period="{period.pk}"]')).to_have_attribute("data-status", "signed_off")
        expect(page.locator(f'tr[data-period="{period.pk}"]')).to_contain_text(officer.get_username())
        assert not [v for v in violations(page) if v["directive"].startswith("script")]

        page.set_viewport_size(PHONE)
        page.goto(f"{web.url}/audit/reviews/{period.pk}/")
        expect(page.locator("#signed-off")).to_contain_text(officer.get_username())
        _fits(page, PHONE["width"])
        page.screenshot(path=str(tmp_path / "review-signed-phone.png"), full_page=True)
        page.goto(f"{web.url}/audit/reviews/")
        _fits(page, PHONE["width"])
        page.screenshot(path=str(tmp_path / "reviews-phone.png"), full_page=True)
    finally:
        context.close()
    period = ReviewPeriod.objects.get(pk=period.pk)
    assert period.signed_off_by == officer
    assert AuditEvent.objects.get(pk=period.sign_off_event_id).kind == EventKind.AUDIT_REVIEW_SIGNED


def test_a_period_page_on_a_phone_while_findings_are_open(chromium: Any, web: Any, tmp_path: Path) -> None:
    activity = activity_period()
    officer = make_user(Role.COMPLIANCE, name="officer")
    context = browser_context(chromium, web.url, officer, viewport=PHONE)
    page = context.new_page()
    try:
        page.goto(f"{web.url}/audit/reviews/{activity.period.pk}/")
        expect(page.locator("article.finding").first).to_be_visible()
        _fits(page, PHONE["width"])
        save = page.locator("article.finding button", has_text="Save").first
        assert save.bounding_box()["height"] >= 43.5  # a tap target
        page.screenshot(path=str(tmp_path / "review-phone.png"), full_page=True)
    finally:
        context.close()
