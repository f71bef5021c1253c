"""The site's shell (issue 14): the Content-Security-Policy, the role-aware navigation and landing, branded error
pages, static files under the real ASGI server, the admin reachable and styled, and the API docs.

Browser tests drive Debian's Chromium against the real web process (uvicorn); screenshots go to pytest's
tmp_path, outside the work tree.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
import pytest
import yaml
from django.contrib.auth.models import Permission
from django.template import Context, Template
from django.test import Client, RequestFactory
from django.urls import get_resolver

from audit.models import AuditEvent, EventKind
from identity.roles import Role
from phigate import views as shell_views
from phigate.navigation import optional_reverse
from tests.browsing import browser_context, violations
from tests.factories import make_agent, make_user

REPO = Path(__file__).resolve().parent.parent
EXPECTED_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "font-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
}


def directives(header: str) -> dict[str, str]:
    parsed = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition(" ")
        parsed[name] = value.strip()
    return parsed


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- 1. Content-Security-Policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/accounts/login/", "/healthz", "/static/phigate.css", "/no/such/page", "/api/schema/", "/admin/login/"]
)
def test_every_response_carries_the_strict_policy_and_the_other_headers(path: str) -> None:
    response = Client().get(path)
    policy = directives(response["Content-Security-Policy"])
    assert {name: policy.get(name) for name in EXPECTED_POLICY} == EXPECTED_POLICY, path
    # Sockets only to this very host (the test client's "testserver"), not to any ws: anywhere.
    assert policy["connect-src"] == "'self' ws://testserver wss://testserver"
    assert "unsafe-inline" not in response["Content-Security-Policy"]
    assert "unsafe-eval" not in response["Content-Security-Policy"]
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    if response["Content-Type"].startswith("text/html"):
        assert response["X-Frame-Options"] == "DENY"
    response.close()


def test_a_request_for_another_host_gets_no_socket_source() -> None:
    response = Client(HTTP_HOST="attacker.example").get("/accounts/login/")
    assert response.status_code == 400
    assert directives(response["Content-Security-Policy"])["connect-src"] == "'self'"


def test_reflected_markup_in_the_queue_filter_does_not_run_in_a_reviewers_browser(chromium: Any, web: Any) -> None:
    """The issue's exploit: ``/?datasource=</script><script>…`` ran in the reviewer's session. Under the CSP an
    injected inline script is blocked whatever the template does (test_hostile_crawl checks the escaping)."""
    context = browser_context(chromium, web.url, make_user(Role.REVIEWER))
    page = context.new_page()
    response = page.goto(f"{web.url}/?datasource={quote('</script><script>window.__pwned=1</script>')}")
    assert response is not None and response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_load_state("load")
    assert page.evaluate("window.__pwned") is None
    context.close()


def test_sockets_may_reach_this_host_only(chromium: Any, web: Any) -> None:
    """connect-src names the page's own host: the live pages' websocket opens, a socket elsewhere is refused."""
    context = browser_context(chromium, web.url, make_user(Role.REVIEWER))
    page = context.new_page()
    page.goto(f"{web.url}/accounts/login/")
    own = urlsplit(web.url).netloc
    other = f"127.0.0.2:{urlsplit(web.url).port}"
    outcome = page.evaluate(
        """([own, other]) => new Promise((resolve) => {
             const result = {};
             const settle = () => { if ("own" in result && "other" in result) resolve(result); };
             const mine = new WebSocket(`ws://${own}/ws/tickets/`);
             mine.onopen = () => { result.own = "open"; mine.close(); settle(); };
             mine.onerror = () => { result.own = "error"; settle(); };
             try {
               const theirs = new WebSocket(`ws://${other}/ws/tickets/`);
               theirs.onopen = () => { result.other = "open"; settle(); };
               theirs.onerror = () => { result.other = "error"; settle(); };
             } catch (error) { result.other = "refused: " + error.name; settle(); }
           })""",
        [own, other],
    )
    assert outcome["own"] == "open", outcome
    assert outcome["other"] != "open", outcome
    assert any(v["directive"] == "connect-src" and "127.0.0.2" in v["blocked"] for v in violations(page))
    context.close()


# Pages as each role reaches them with ordinary input: none may need anything the CSP refuses (inline script or
# style, style attributes, eval). (name, role, path; "{ticket}" and "{session}" are filled in by the fixture.)
PAGES_UNDER_CSP = [
    ("login", None, "/accounts/login/"),
    ("queue", Role.REVIEWER, "/queue/"),
    ("ticket", Role.REVIEWER, "/tickets/{ticket}/"),
    ("audit-search", Role.COMPLIANCE, "/audit/"),
    ("audit-replay", Role.COMPLIANCE, "/audit/sessions/{session}/"),
    ("exports", Role.COMPLIANCE, "/audit/exports/"),
    ("export", Role.COMPLIANCE, "/audit/exports/{export}/"),
    ("slack-link", Role.REVIEWER, "/integrations/slack/link"),
    ("error-403", Role.REVIEWER, "/audit/"),
    ("error-404", Role.REVIEWER, "/no/such/page"),
    ("api-docs", None, "/api/docs/"),
    ("admin-index", "staff", "/admin/"),
    ("admin-policy-editor", "staff", "/admin/policy/phicolumn/"),
]


@pytest.fixture(scope="module")
def page_objects(services: Any) -> dict[str, Any]:
    """One held ticket, one audit session and one evidence export to open pages of."""
    from approvals.models import Ticket
    from audit.models import EvidenceExport
    from tests.factories import agent_client

    _, agent_api = agent_client(make_user(Role.ENGINEER))
    response = agent_api.post(
        "/api/v1/queries", {"datasource": "clinic", "sql": "DELETE FROM scratch WHERE id = 0"}, format="json"
    )
    assert response.status_code == 202, response.content
    ticket = Ticket.objects.get(pk=response.json()["ticket"]["id"])
    officer = make_user(Role.COMPLIANCE)
    export = EvidenceExport.objects.create(requested_by=officer, filters={"since": "2026-01-01", "until": "2026-02-01"})
    return {"ticket": ticket.pk, "session": ticket.session_id, "officer": officer, "export": export.pk}


def person_for(role: Role | str | None, objects: dict[str, Any]) -> Any:
    if role is None:
        return None
    if role == "staff":
        staff = make_user(Role.ADMIN)
        staff.is_staff = True
        staff.save()
        staff.user_permissions.set(Permission.objects.filter(content_type__app_label="policy"))
        return staff
    if role == Role.COMPLIANCE:
        return objects["officer"]
    return make_user(Role(role))


@pytest.mark.parametrize(("name", "role", "path"), PAGES_UNDER_CSP, ids=[page[0] for page in PAGES_UNDER_CSP])
def test_each_page_works_under_the_policy(
    chromium: Any, web: Any, page_objects: dict[str, Any], name: str, role: Any, path: str
) -> None:
    context = browser_context(chromium, web.url, person_for(role, page_objects))
    page = context.new_page()
    page.goto(web.url + path.format(**page_objects))
    page.wait_for_load_state("load")
    page.wait_for_timeout(300)  # deferred scripts and what they fetch
    assert violations(page) == [], (name, violations(page))
    context.close()


# Inline code the policy would refuse, in the templates of the repository (Django's own and DRF's templates are
# checked in the browser above).
INLINE = {
    "inline <script>": re.compile(r"<script\b(?![^>]*\bsrc=)(?![^>]*type=\"application/(?:ld\+)?json\")[^>]*>", re.I),
    "<style> block": re.compile(r"<style\b", re.I),
    "style attribute": re.compile(r"\sstyle\s*=", re.I),
    "event handler attribute": re.compile(r"<[^>]+\son[a-z]+\s*=", re.I),
    "javascript: URL": re.compile(r"javascript:", re.I),
}


def test_templates_have_no_inline_script_or_style() -> None:
    found = []
    for template in sorted((REPO / "templates").rglob("*.html")):
        text = template.read_text()
        for what, pattern in INLINE.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{template.relative_to(REPO)}:{line}: {what}")
    assert found == []


# --- 2. Navigation and landing -------------------------------------------------------------------------------


class _Nav(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.links: list[tuple[str, str, bool]] = []
        self._href: str | None = None
        self._current = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "nav" and "site-nav" in (values.get("class") or ""):
            self.inside = True
        elif self.inside and tag == "a":
            self._href, self._current = values.get("href"), values.get("aria-current") == "page"

    def handle_endtag(self, tag: str) -> None:
        if tag == "nav":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self._href is not None and data.strip():
            self.links.append((data.strip(), self._href, self._current))
            self._href = None


def nav_of(html: bytes) -> list[tuple[str, str, bool]]:
    parser = _Nav()
    parser.feed(html.decode())
    return parser.links


# Who sees what (identity/roles.py): label -> (URL name, who). "My reviews" and "My requests" are pages of
# another change; until their URL names exist they are left out, and the bar still renders.
BAR = [
    ("Queue", "queue", {"reviewer", "compliance", "reviewer+compliance"}),
    ("My reviews", "my-reviews", {"reviewer", "reviewer+compliance"}),
    ("My requests", "my-requests", {"owner", "engineer"}),
    ("Audit", "audit-search", {"compliance", "reviewer+compliance"}),
    ("Exports", "audit-exports", {"compliance", "reviewer+compliance"}),
    ("Reviews", "audit-reviews", {"compliance", "reviewer+compliance"}),
    ("Admin", "admin:index", {"staff"}),
]


def make_person(kind: str) -> Any:
    roles = {
        "reviewer": [Role.REVIEWER],
        "compliance": [Role.COMPLIANCE],
        "reviewer+compliance": [Role.REVIEWER, Role.COMPLIANCE],
        "owner": [],  # owns an agent, holds no role at all
        "engineer": [Role.ENGINEER],
        "staff": [Role.ADMIN],
        "nobody": [],
    }[kind]
    user = make_user(*roles, name=kind.replace("+", "-"))
    if kind == "owner":
        make_agent(user)
    if kind == "staff":
        user.is_staff = True
        user.save()
    return user


@pytest.mark.parametrize(
    "kind", ["reviewer", "compliance", "reviewer+compliance", "owner", "engineer", "staff", "nobody"]
)
def test_the_bar_shows_each_person_what_their_roles_can_use(kind: str) -> None:
    client = signed_in(make_person(kind))
    page = client.get("/integrations/slack/link")  # a page every signed-in person may open
    assert page.status_code == 200
    expected = [
        (label, optional_reverse(name))
        for label, name, who in BAR
        if kind in who and optional_reverse(name) is not None
    ]
    assert [(label, href) for label, href, _ in nav_of(page.content)] == expected


def test_the_current_page_is_marked_in_the_bar() -> None:
    client = signed_in(make_person("reviewer+compliance"))
    assert [label for label, _, current in nav_of(client.get("/audit/").content) if current] == ["Audit"]
    assert [label for label, _, current in nav_of(client.get("/queue/").content) if current] == ["Queue"]
    assert [label for label, _, current in nav_of(client.get("/audit/exports/").content) if current] == ["Exports"]


def test_a_missing_url_name_leaves_the_bar_and_the_page_intact() -> None:
    rendered = Template("{% load shell %}[{% url_if_exists 'no-such-page' %}][{% url_if_exists 'audit-search' %}]")
    assert rendered.render(Context({})) == "[][/audit/]"
    assert optional_reverse("no-such-page") is None


@pytest.mark.parametrize(
    ("kind", "lands_on"),
    [
        ("reviewer", "queue"),
        ("reviewer+compliance", "queue"),
        ("compliance", "/audit/"),
        ("owner", "my-requests"),
        ("engineer", "my-requests"),
        ("nobody", "queue"),
    ],
)
def test_slash_lands_each_role_where_its_work_is(kind: str, lands_on: str) -> None:
    response = signed_in(make_person(kind)).get("/")
    if lands_on == "my-requests" and optional_reverse("my-requests") is None:
        lands_on = "queue"  # until "My requests" exists, an agent owner keeps the queue page (their requests)
    if lands_on == "queue":
        assert response.status_code == 200
        assert response.resolver_match is not None and response.resolver_match.url_name == "home"
        assert b'id="recent-tickets"' in response.content  # the queue page itself, at /
        if kind.startswith("reviewer"):
            assert b'id="pending-tickets"' in response.content
    else:
        target = lands_on if lands_on.startswith("/") else optional_reverse(lands_on)
        assert response.status_code == 302 and response["Location"] == target


def test_nobody_signed_in_is_sent_to_sign_in_from_slash() -> None:
    response = Client().get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_bar_per_role_in_a_browser(chromium: Any, web: Any, tmp_path: Path) -> None:
    """Screenshots of the bar for each kind of person (in tmp_path); the links are real and lead to 200s."""
    for kind in ("reviewer", "compliance", "owner", "staff"):
        context = browser_context(chromium, web.url, make_person(kind))
        page = context.new_page()
        page.goto(f"{web.url}/")
        page.wait_for_load_state("load")
        # An entry's alert (overdue activity reviews) follows its label: "Reviews 2 overdue".
        labels = [re.sub(r"\s+\d+ overdue$", "", text) for text in page.locator(".site-nav a").all_inner_texts()]
        expected = [label for label, name, who in BAR if kind in who and optional_reverse(name) is not None]
        assert labels == expected, kind
        page.screenshot(path=str(tmp_path / f"nav-{kind}.png"))
        for href in page.locator(".site-nav a").evaluate_all("(links) => links.map((a) => a.href)"):
            assert page.request.get(href).status == 200, (kind, href)
        context.close()
    assert len(list(tmp_path.glob("nav-*.png"))) == 4


def test_the_bar_on_a_phone(chromium: Any, web: Any, tmp_path: Path) -> None:
    """390 px wide: the bar wraps instead of widening the page, and its links are 44 px targets."""
    person = make_person("reviewer+compliance")
    person.is_staff = True
    person.save()
    context = browser_context(chromium, web.url, person, viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.goto(f"{web.url}/integrations/slack/link")
    assert page.locator(".site-nav a").count() >= 4
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    heights = page.locator(".site-nav a, .sign-out button").evaluate_all(
        "(targets) => targets.map((el) => el.getBoundingClientRect().height)"
    )
    assert min(heights) >= 44, heights
    page.screenshot(path=str(tmp_path / "nav-phone.png"), full_page=True)
    context.close()


# --- 3. Error pages ------------------------------------------------------------------------------------------


def test_a_missing_page_is_branded_with_the_bar_and_a_way_back() -> None:
    response = signed_in(make_person("reviewer")).get("/no/such/page")
    assert response.status_code == 404
    html = response.content.decode()
    assert 'id="error-404"' in html and 'href="/"' in html and "/static/phigate.css" in html
    assert [label for label, _, _ in nav_of(response.content)][:1] == ["Queue"]
    anonymous = Client().get("/tickets/999999999/")  # login_required first: anonymous is sent to sign in
    assert anonymous.status_code == 302
    assert 'href="/accounts/login/"' in Client().get("/no/such/page").content.decode()


def test_a_refusal_says_which_role_is_needed() -> None:
    response = signed_in(make_person("reviewer")).get("/audit/")
    assert response.status_code == 403
    html = response.content.decode()
    assert 'id="error-403"' in html
    assert re.search(r'id="role-needed">It needs the <strong>Compliance officer</strong> role', html)
    assert [label for label, _, _ in nav_of(response.content)][:1] == ["Queue"]


def test_a_routine_refusal_logs_one_line_and_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    client = signed_in(make_person("reviewer"))
    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert client.get("/audit/").status_code == 403
    refusals = [r for r in caplog.records if r.name == "django.request" and r.getMessage().startswith("Forbidden")]
    assert [r.getMessage() for r in refusals] == ["Forbidden (Permission denied): /audit/"]
    assert all(r.exc_info is None and not r.exc_text for r in refusals)
    assert "Traceback" not in caplog.text


def test_a_server_error_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Only routine refusals lose the traceback: a 5xx record keeps it (the filter looks at the status)."""
    from phigate.log_filters import RoutineRefusalsWithoutTraceback

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        failure = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "Server Error", None, sys.exc_info())
    failure.status_code = 500
    assert RoutineRefusalsWithoutTraceback().filter(failure) and failure.exc_info is not None


def test_a_stale_form_gets_the_branded_csrf_page() -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_person("reviewer"))
    response = client.post("/accounts/logout/")
    assert response.status_code == 403
    assert 'id="error-csrf"' in response.content.decode()


def test_a_server_error_page_renders_without_the_request_and_links_back() -> None:
    assert get_resolver().resolve_error_handler(500) is shell_views.server_error
    assert get_resolver().resolve_error_handler(403) is shell_views.permission_denied
    assert get_resolver().resolve_error_handler(404) is shell_views.page_not_found
    response = shell_views.server_error(RequestFactory().get("/"))
    html = response.content.decode()
    assert response.status_code == 500 and 'id="error-500"' in html and 'href="/"' in html
    assert "/static/phigate.css" in html


def test_the_refusal_page_in_a_browser(chromium: Any, web: Any, tmp_path: Path) -> None:
    context = browser_context(chromium, web.url, make_person("reviewer"))
    page = context.new_page()
    response = page.goto(f"{web.url}/audit/")
    assert response is not None and response.status == 403
    assert "Compliance officer" in page.inner_text("#role-needed")
    assert page.locator(".site-nav a").all_inner_texts()[:1] == ["Queue"]
    # Styled by the site's sheet (served by the web process itself), not a bare browser page.
    assert page.eval_on_selector(".site-header", "(el) => getComputedStyle(el).backgroundColor") == "rgb(29, 35, 48)"
    page.screenshot(path=str(tmp_path / "error-403.png"), full_page=True)
    assert violations(page) == []
    page.click("text=Back to your start page")
    page.wait_for_url(f"{web.url}/")
    context.close()


# --- 4. Static files and the admin under uvicorn -------------------------------------------------------------


class _Stylesheets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "link" and values.get("rel") == "stylesheet" and values.get("href"):
            self.hrefs.append(str(values["href"]))


def test_the_admin_login_page_is_styled_by_the_real_asgi_server(web: Any) -> None:
    page = httpx.get(f"{web.url}/admin/login/", timeout=10)
    assert page.status_code == 200
    sheets = _Stylesheets()
    sheets.feed(page.text)
    assert any("admin/css/base.css" in href for href in sheets.hrefs), sheets.hrefs
    for href in sheets.hrefs:
        css = httpx.get(urljoin(f"{web.url}/admin/login/", href), timeout=10)
        assert css.status_code == 200, href
        assert css.headers["content-type"].startswith("text/css"), href
    assert httpx.get(f"{web.url}/static/phigate.css", timeout=10).status_code == 200


def test_a_staff_user_reaches_the_policy_editor_styled(chromium: Any, web: Any, tmp_path: Path) -> None:
    staff = person_for("staff", {})
    context = browser_context(chromium, web.url)
    page = context.new_page()
    page.goto(f"{web.url}/admin/login/?next=/admin/policy/phicolumn/")
    page.fill("#id_username", staff.username)
    page.fill("#id_password", "correct horse battery")
    page.click("input[type=submit]")
    page.wait_for_url(f"{web.url}/admin/policy/phicolumn/")
    assert "PHI" in page.inner_text("#content h1") or "phi" in page.inner_text("#content h1").lower()
    # admin/css/base.css sets the header's colour: it only applies if the file was served.
    header = page.eval_on_selector("#header", "(el) => getComputedStyle(el).backgroundColor")
    assert header not in ("rgba(0, 0, 0, 0)", "transparent"), header
    page.screenshot(path=str(tmp_path / "admin-policy.png"))
    assert violations(page) == []
    context.close()


# --- 5. API documentation ------------------------------------------------------------------------------------


def test_the_api_docs_render_locally_under_the_policy(chromium: Any, web: Any, tmp_path: Path) -> None:
    context = browser_context(chromium, web.url, make_person("reviewer"))
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{web.url}/api/docs/")
    page.wait_for_selector(".opblock", timeout=20_000)  # Swagger UI drew the operations from /api/schema/
    assert page.locator(".opblock").count() >= 7
    assert page.locator("button.authorize").count() == 1  # the bearer scheme: "Authorize" asks for a token
    assert all(url.startswith(web.url) or url.startswith("data:") for url in requested), requested
    assert any("/static/drf_spectacular_sidecar/swagger-ui-dist/" in url for url in requested)
    assert page.locator(".site-nav a").count() >= 1  # the site's bar, for a signed-in person
    page.screenshot(path=str(tmp_path / "api-docs.png"))
    assert violations(page) == []
    context.close()


def test_the_schema_declares_the_bearer_scheme_and_fetching_it_warns_nothing() -> None:
    for _ in range(2):  # drf-spectacular warned on every fetch, not just the first
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            response = Client().get("/api/schema/")
        assert response.status_code == 200
        assert "Warning" not in stderr.getvalue() and "Error" not in stderr.getvalue(), stderr.getvalue()
    schema = yaml.safe_load(response.content)
    scheme = schema["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    operations = [op for path in schema["paths"].values() for op in path.values() if isinstance(op, dict)]
    assert len(operations) >= 7
    assert all({"bearerAuth": []} in op.get("security", []) for op in operations)


# --- 6. Audit pages: nothing recorded by looking at the shell -------------------------------------------------


def test_the_nav_and_error_pages_record_nothing() -> None:
    """The bar and the landing read roles only: opening pages adds no audit event under the viewer's name."""
    person = make_person("reviewer+compliance")
    client = signed_in(person)
    before = AuditEvent.objects.filter(actor=person).count()
    for path in ("/queue/", "/no/such/page", "/integrations/slack/link", "/api/docs/"):
        client.get(path)
    assert AuditEvent.objects.filter(actor=person).count() == before
    # (a search is recorded, by design: the audit trail audits its own readers)
    client.get("/audit/")
    assert AuditEvent.objects.filter(actor=person, kind=EventKind.AUDIT_SEARCHED).count() == 1
