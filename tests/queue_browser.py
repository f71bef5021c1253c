"""Browser helpers for the queue and personal pages' tests (tests/test_queue_triage.py, tests/test_my_requests.py).

Pages are loaded under a strict Content-Security-Policy added to every HTML response on the way in (the one the
site will send: scripts only from 'self', no inline script, no inline event handlers), so a test that drives
the page's script also shows that the script runs under it. ``strict_styles`` adds ``style-src 'self'`` too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from approvals.models import Ticket

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"  # tests.factories.make_user's

# Every securitypolicyviolation of the page, for the test to read (init scripts are not subject to the CSP).
_RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push({directive: event.effectiveDirective, blocked: event.blockedURI,
                               sample: event.sample, source: event.sourceFile});
});
"""


def content_security_policy(web_url: str, *, strict_styles: bool) -> str:
    host = urlsplit(web_url).netloc
    styles = "'self' 'report-sample'" if strict_styles else "'self' 'unsafe-inline'"
    return (
        "default-src 'self'; script-src 'self' 'report-sample'; "
        f"style-src {styles}; img-src 'self' data:; connect-src 'self' ws://{host}; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def open_context(
    chromium: Any, web_url: str, *, width: int = 1280, height: int = 800, csp: bool = True, strict_styles: bool = False
) -> Any:
    """A browser context whose HTML responses carry the strict CSP (unless the site already sends one)."""
    context = chromium.new_context(viewport={"width": width, "height": height})
    context.add_init_script(_RECORD_VIOLATIONS)
    if csp:
        policy = content_security_policy(web_url, strict_styles=strict_styles)

        def with_policy(route: Any, request: Any) -> None:
            if request.resource_type != "document":
                route.continue_()
                return
            response = route.fetch(max_redirects=0)
            headers = dict(response.headers)
            headers.setdefault("content-security-policy", policy)
            route.fulfill(response=response, headers=headers)

        context.route(f"{web_url}/**", with_policy)
    return context


def sign_in(context: Any, web_url: str, user: Any) -> Any:
    """A page signed in with the local password form (the ``web`` fixture runs with LOCAL_LOGIN=True)."""
    page = context.new_page()
    page.goto(f"{web_url}/accounts/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    # Signed in: `/` then lands each person where their work is (a reviewer stays, an owner goes to /requests/).
    page.wait_for_url(
        lambda url: url.startswith(f"{web_url}/") and "/accounts/login" not in url and "/login" not in url
    )
    return page


def violations(page: Any) -> list[dict[str, str]]:
    return list(page.evaluate("window.__cspViolations || []"))


def foreign_violations(page: Any) -> list[dict[str, str]]:
    """Violations not explained by base.html's own inline styles (the site shell moves those to a file).

    Script violations are never explained away: the pages' scripts must load from files and run.
    """
    base = (REPO / "templates" / "base.html").read_text()
    return [
        found
        for found in violations(page)
        if found["directive"].startswith("script") or (found.get("sample") or "").strip()[:30] not in base
    ]


def held(agent_api: Any, sql: str, reason: str = "") -> Ticket:
    """A ticket held by the real gateway for ``sql`` sent by the agent behind ``agent_api``."""
    response = agent_api.post("/api/v1/queries", {"datasource": "clinic", "sql": sql, "reason": reason}, format="json")
    assert response.status_code == 202, response.content
    return Ticket.objects.select_related("datasource").get(pk=response.json()["ticket"]["id"])


PHONE = {"width": 390, "height": 844}

# What a phone layout must hold: nothing wider than the screen, tables as cards, tap targets 44 px tall.
_PHONE_CHECK = """
() => {
  const width = document.scrollingElement.scrollWidth;
  const small = [];
  for (const element of document.querySelectorAll("main a, main button, main select, main input:not([type=hidden])")) {
    const box = element.getBoundingClientRect();
    const style = getComputedStyle(element);
    if (box.width <= 2 || box.height <= 2 || style.visibility === "hidden" || element.closest("thead")) continue;
    const label = `${element.tagName.toLowerCase()} "${element.textContent.trim().slice(0, 30)}"`;
    if (box.height < 43.5) small.push(`${label} ${box.height}px`);
  }
  const tables = [...document.querySelectorAll("main table.cards")].map((table) => ({
    id: table.id,
    display: getComputedStyle(table.tBodies[0].rows[0] || table).display,
    header: table.tHead ? table.tHead.getBoundingClientRect().height : 0,
  }));
  return {width, small, tables};
}
"""


def phone_layout(page: Any) -> dict[str, Any]:
    return dict(page.evaluate(_PHONE_CHECK))


def assert_phone_layout(page: Any) -> None:
    found = phone_layout(page)
    assert found["width"] <= 390, f"horizontal scroll: {found['width']} px wide"
    assert not found["small"], f"tap targets under 44 px: {found['small']}"
    for table in found["tables"]:
        assert table["display"] in ("block", "grid"), f"table {table['id']} is not shown as cards: {table}"
        assert table["header"] <= 1, f"table {table['id']} still shows its header row: {table}"
