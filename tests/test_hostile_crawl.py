"""A hostile-input crawl of every page of the web app, in real Chromium against the real web process (issue 14).

Every URL pattern of the URLconf is enumerated (so a page added later is crawled without anyone listing it) and
visited as each kind of person, with hostile values:

- in every query parameter a page may read: names read anywhere in the code (``request.GET`` and
  ``query_params`` look-ups, found by parsing the source), names of the page's own form fields and links, and
  a few generic ones;
- in every path parameter (a path id that is itself hostile mostly gets the 404 page);
- stored: tickets, reviews, an agent, people, a data source, audit events, a session, an evidence export, a
  Slack link, policy objects and activity reviews (findings, notes, a sign-off) whose names, SQL, reasons,
  comments, notes and results carry the payloads.

The browser runs under the site's real Content-Security-Policy, and after each page the crawl checks:

- no injected script ran (``window.__pwned``) and no dialog opened;
- no payload became markup, whether or not the CSP then stopped it: a runnable ``<script>`` holding a payload,
  an ``on…`` handler attribute, a ``javascript:`` URL in an href/src/action. This is what makes the crawl
  catch a template that fails to escape (the queue's ``filters_json|safe`` of issue 14) although the CSP
  already keeps the payload from running: the escaping must hold on its own;
- no 5xx, no request leaves the site, and every HTML response (documents and the fragments pages fetch)
  carries the Content-Security-Policy.

Each page is opened with all hostile parameters at once; when that lands somewhere else than a plain visit
(a parameter that switches the page into another one, like DRF's ``?format=``), the switching parameters are
found by halving and sent alone, the rest together.

A pattern the crawl cannot fill (a path parameter without a recipe in ``PATH_VALUES``) fails the test: add a
recipe rather than let a page go unvisited.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.urls.exceptions import Resolver404
from django.utils import timezone
from rest_framework.authentication import SessionAuthentication
from rest_framework.views import APIView

from approvals.lifecycle import open_ticket
from approvals.models import Decision, Review, Status, Ticket
from approvals.params import StatementParams
from approvals.slack.linking import link_token
from approvals.slack.models import SlackLink, VerifiedBy
from audit.activity_review import note_finding, period_containing, refresh_findings, sign_off
from audit.models import (
    Disposition,
    EventKind,
    EvidenceExport,
    ExportStatus,
    Outcome,
    ReviewFinding,
    ReviewPeriod,
)
from audit.recorder import Context, record
from identity.models import Agent
from identity.principal import Principal
from identity.roles import Role
from policy.models import (
    ApproverRule,
    ClassificationSource,
    ClassifiedRelation,
    DataSource,
    PhiColumn,
    PolicyVersion,
)
from tests.browsing import browser_context
from tests.factories import make_user

REPO = Path(__file__).resolve().parent.parent
SOURCE_PACKAGES = ("phigate", "identity", "policy", "audit", "approvals", "gateway")

# The payloads. Each sets window.__pwned if it ever runs: breaking out of a <script> block, out of a
# double-quoted and a single-quoted attribute, and as a URL.
BREAK_SCRIPT = "</script><script>__pwned=1</script>"
BREAK_ATTRIBUTE = '"><img src=x onerror=__pwned=1>'
BREAK_QUOTE = "'><svg onload=__pwned=1>"
POLYGLOT = BREAK_SCRIPT + BREAK_ATTRIBUTE + BREAK_QUOTE
JAVASCRIPT_URL = "javascript:__pwned=1//"
# One value for query parameters: a URL that runs script if it lands in an href or src as it is, followed by
# every break-out (after "//" they are a comment to the URL's script, and markup anywhere else).
QUERY_VALUE = JAVASCRIPT_URL + POLYGLOT
SESSION = "http:" + BREAK_ATTRIBUTE  # session ids are at most 64 characters

# Names a page might read whatever its code or forms say (Django admin's and DRF's own).
GENERIC_PARAMETERS = {"next", "format", "lang", "version", "page", "cursor", "q", "o", "p", "e", "_popup", "all"}
GENERIC_PARAMETERS |= {"url", "configUrl"}  # Swagger UI's own (it must not load a spec or config named there)

ROLES = ("anonymous", "outsider", "reviewer", "owner", "compliance", "staff")
# Django's admin answers every non-staff person with the same redirect to its login page (only the name of a
# signed-in one is added, escaped as on every other page): crawling it as every role would repeat one page.
ROLES_BY_NAMESPACE = {"admin": ("anonymous", "staff")}
# API views that take bearer tokens only ignore the browser's session: every role sees the same page.
SESSIONLESS_ROLES = ("anonymous",)

EXPECTED_CSP = "script-src 'self'"


@dataclass
class World:
    people: dict[str, Any]
    tickets: list[int]
    export: int
    session: str
    datasource: DataSource
    slack_token: str
    reviews: list[int]  # activity review periods: one open, one signed off
    finding: int
    event: int  # a read whose every shown field and detail is hostile (the event page, the reveal action)


def _hostile_user(kind: str, *roles: Role, staff: bool = False) -> Any:
    user = make_user(*roles, name=kind)
    user.username = f"{user.username}{POLYGLOT}"  # usernames are shown everywhere
    user.first_name, user.last_name, user.email = BREAK_ATTRIBUTE, BREAK_SCRIPT, f"x{BREAK_QUOTE}@x.test"[:254]
    user.is_staff = user.is_superuser = staff
    user.save()
    return user


@pytest.fixture(scope="module")
def world(services: Any) -> Iterator[World]:
    """Stored objects whose every shown field is hostile, reachable by the people who may see them.

    Afterwards the shared control plane is left as other tests expect it: what was made is removed again, even
    when making it failed half-way (audit events are append-only and stay, with their people, deactivated;
    nothing another test looks for names them).
    """
    undo: list[Callable[[], object]] = []
    try:
        yield _build_world(undo)
    finally:
        for step in reversed(undo):
            step()


def _build_world(undo: list[Callable[[], object]]) -> World:
    people = {
        "outsider": _hostile_user("outsider"),
        "reviewer": _hostile_user("reviewer", Role.REVIEWER),
        "owner": _hostile_user("owner", Role.ENGINEER),
        "compliance": _hostile_user("compliance", Role.COMPLIANCE),
        "staff": _hostile_user("staff", Role.ADMIN, staff=True),
    }
    undo.append(
        lambda: type(people["owner"]).objects.filter(pk__in=[p.pk for p in people.values()]).update(is_active=False)
    )
    owner = people["owner"]
    agent, _ = Agent.issue(owner=owner, name=f"hostile-{Agent.objects.count()}")
    # Agent.issue validates the name (it is a database user name); the database itself would take anything.
    Agent.objects.filter(pk=agent.pk).update(name=f"a{agent.pk}{BREAK_SCRIPT}")
    agent.refresh_from_db()
    clinic = DataSource.objects.get(name="clinic")
    hostile_source = DataSource.objects.create(name=BREAK_ATTRIBUTE, description=POLYGLOT)
    undo.append(hostile_source.delete)
    group = Group.objects.create(name=f"group{POLYGLOT}")
    undo.append(group.delete)
    context = Context(front="http", session_id=SESSION, source_address="127.0.0.1")
    quoted = POLYGLOT.replace("'", "''")
    params = StatementParams(values=(POLYGLOT.encode(), b"\x00\xff<script>"), formats=(0, 1), type_oids=(25, 17))

    def held(datasource: DataSource, principal: Principal, sql: str) -> Ticket:
        ticket = open_ticket(
            principal=principal,
            datasource=datasource,
            sql=sql,
            params=params,
            reason=POLYGLOT,
            risk="high",
            reasons=[POLYGLOT, BREAK_QUOTE],
            statement_types=[BREAK_ATTRIBUTE],
            relations=[POLYGLOT],
            approvals_required=2,
            fingerprint="",
            context=context,
        )
        undo.append(lambda: Ticket.objects.filter(pk=ticket.pk).delete())
        undo.append(lambda: Review.objects.filter(ticket_id=ticket.pk).delete())
        return ticket

    pending = held(clinic, Principal.for_agent(agent), f"UPDATE scratch SET label = '{quoted}' WHERE id = $1")
    executed = held(hostile_source, Principal.for_agent(agent), f"DELETE FROM scratch WHERE label = '{quoted}'")
    failed = held(hostile_source, Principal(human=owner), f"-- {POLYGLOT}\nDROP TABLE scratch")
    now = timezone.now()
    for ticket in (executed, failed):
        Review.objects.create(
            ticket=ticket,
            reviewer=people["reviewer"],
            decision=Decision.APPROVE,
            comment=POLYGLOT,
            sql_sha256=ticket.sql_sha256,
        )
    Ticket.objects.filter(pk=executed.pk).update(
        status=Status.EXECUTED,
        decided_at=now,
        approval_valid_until=now + timedelta(minutes=5),
        execution_started_at=now,
        executed_at=now + timedelta(milliseconds=7),
        rowcount=3,
        result={"columns": [POLYGLOT], "rows": [[POLYGLOT], [BREAK_QUOTE], [None]], "truncated": False},
    )
    Ticket.objects.filter(pk=failed.pk).update(status=Status.FAILED, decided_at=now, error=POLYGLOT)
    Review.objects.create(
        ticket=pending, reviewer=people["reviewer"], decision=Decision.REJECT, comment=POLYGLOT, sql_sha256="0" * 64
    )

    # A session whose replay shows a read with its masked preview, verdict and reasons.
    submitted = record(
        EventKind.QUERY_SUBMITTED,
        principal=Principal.for_agent(agent),
        context=context,
        outcome=Outcome.HELD,
        datasource=BREAK_ATTRIBUTE,
        ticket_id=pending.pk,
        statement=POLYGLOT,
        summary=POLYGLOT,
        details={"verdict": "held", "reasons": [POLYGLOT], "tables": [POLYGLOT], "statement_id": POLYGLOT},
    )
    record(
        EventKind.QUERY_EXECUTED,
        principal=Principal.for_agent(agent),
        context=context,
        datasource=BREAK_ATTRIBUTE,
        statement=POLYGLOT,
        summary=POLYGLOT,
        details={
            "submitted_event": submitted.pk,
            "rowcount": 1,
            "duration_ms": 2,
            "masking": {POLYGLOT: {"phi_type": POLYGLOT, "mask": POLYGLOT}},
            "preview": {"columns": [POLYGLOT], "rows": [[POLYGLOT]]},
            "result_sha256": POLYGLOT,
        },
    )
    export = EvidenceExport.objects.create(
        requested_by=people["compliance"],
        filters={"since": POLYGLOT, "until": POLYGLOT, "user": POLYGLOT, "datasource": POLYGLOT},
        status=ExportStatus.FAILED,
        message=POLYGLOT,
        finished_at=now,
    )
    undo.append(export.delete)
    # Slack ids have a fixed form (the database checks it); the signed link token below carries hostile ones.
    link = SlackLink.objects.create(
        user=people["reviewer"],
        slack_user_id=f"U0CRAWL{people['reviewer'].pk}",
        slack_team_id="T0TEST",
        verified_by=VerifiedBy.EXPLICIT,
    )
    undo.append(link.delete)
    for item in (
        PhiColumn.objects.create(
            datasource=hostile_source,
            schema_name=BREAK_QUOTE,
            table_name=BREAK_SCRIPT,
            column_name=BREAK_ATTRIBUTE,
            phi_type="ssn",
        ),
        ClassifiedRelation.objects.create(
            datasource=hostile_source,
            schema_name=BREAK_QUOTE,
            table_name=BREAK_SCRIPT,
            how=ClassificationSource.MANUAL,
        ),
        PolicyVersion.objects.create(
            datasource=hostile_source, number=1, document=POLYGLOT, sha256="0" * 64, changed_by=people["staff"]
        ),
    ):
        undo.append(item.delete)
    rule = ApproverRule.objects.create(datasource=hostile_source, mode="any_of", count=1)
    undo.append(rule.delete)
    rule.groups.add(group)
    reviews, finding = _review_periods(hostile_source, people, context, undo)
    return World(
        people=people,
        tickets=[pending.pk, executed.pk, failed.pk],
        export=export.pk,
        session=SESSION,
        datasource=hostile_source,
        slack_token=link_token(BREAK_ATTRIBUTE, BREAK_QUOTE),
        reviews=reviews,
        finding=finding,
        event=submitted.pk,
    )


def _review_periods(
    datasource: DataSource, people: dict[str, Any], context: Context, undo: list[Callable[[], object]]
) -> tuple[list[int], int]:
    """The hostile data source's activity review: this period (its findings name the hostile agent, tickets and
    reasons, and carry hostile notes) and the one before, signed off (a sign-off cannot be undone; it stays)."""
    officer = Principal(human=people["compliance"])
    start, end = period_containing(timezone.now())
    current, _ = ReviewPeriod.objects.get_or_create(
        datasource=datasource.name, starts_at=start, defaults={"ends_at": end}
    )
    undo.append(lambda: ReviewPeriod.objects.filter(pk=current.pk, signed_off_at__isnull=True).delete())
    undo.append(lambda: ReviewFinding.objects.filter(period=current, period__signed_off_at__isnull=True).delete())
    past, _ = ReviewPeriod.objects.get_or_create(
        datasource=datasource.name, starts_at=start - (end - start), defaults={"ends_at": start}
    )
    for period in (current, past):
        refresh_findings(period)
        for finding in period.findings.all():
            note_finding(officer, period.pk, finding.pk, Disposition.FOLLOW_UP, POLYGLOT)
    sign_off(officer, past.pk, context)
    first = current.findings.order_by("pk").first()
    assert first is not None, "the hostile tickets make findings"
    return [current.pk, past.pk], first.pk


# --- Which URLs to visit -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One URL pattern, with the chain of patterns above it (for its prefix) and its parameters in order."""

    chain: tuple[Any, ...]
    name: str  # "namespace:name", or "" for an unnamed pattern
    callback: Callable[..., Any]

    @property
    def namespace(self) -> str:
        return self.name.split(":", 1)[0] if ":" in self.name else ""

    @property
    def describe(self) -> str:
        return "".join(str(pattern.pattern) for pattern in self.chain) + (f"  [{self.name}]" if self.name else "")


def routes() -> list[Route]:
    found: list[Route] = []

    def walk(patterns: list[Any], chain: tuple[Any, ...], namespace: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
                walk(entry.url_patterns, (*chain, entry), inner)
            elif isinstance(entry, URLPattern):
                name = f"{namespace}{entry.name}" if entry.name else ""
                found.append(Route((*chain, entry), name, entry.callback))

    walk(get_resolver().url_patterns, (), "")
    return found


_ROUTE_PARAMETER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")


def _fill_route(text: str, values: dict[str, str]) -> str:
    return _ROUTE_PARAMETER.sub(lambda match: values[match.group("name")], text)


def _fill_regex(text: str, values: dict[str, str]) -> str:
    """A regex pattern's text with each named group replaced by its value (groups may nest parentheses)."""
    out, index = [], 0
    while index < len(text):
        if text.startswith("(?P<", index):
            name_end = text.index(">", index)
            name = text[index + 4 : name_end]
            depth, cursor = 1, name_end + 1
            while depth:
                if text[cursor] == "\\":
                    cursor += 2
                    continue
                depth += {"(": 1, ")": -1}.get(text[cursor], 0)
                cursor += 1
            out.append(values[name])
            index = cursor
        else:
            out.append(text[index])
            index += 1
    return "".join(out).lstrip("^").rstrip("$").replace("\\", "")


def parameter_names(route: Route) -> list[str]:
    names = []
    for pattern in route.chain:
        text = str(pattern.pattern)
        names += [m.group("name") for m in _ROUTE_PARAMETER.finditer(text)] if "(?P<" not in text else []
        names += re.findall(r"\(\?P<(\w+)>", text)
    return names


def build(route: Route, values: dict[str, str]) -> str:
    parts = []
    for pattern in route.chain:
        text = str(pattern.pattern)
        parts.append(_fill_regex(text, values) if "(?P<" in text or text.startswith("^") else _fill_route(text, values))
    return "/" + "".join(parts)


def _admin_model(url_so_far: str) -> Any:
    """The model of an admin URL (/admin/<app>/<model>/…)."""
    _, _, app_label, model_name, *_ = url_so_far.split("/")
    return apps.get_model(app_label, model_name)


def _admin_objects(route: Route, world: World) -> list[str]:
    model = _admin_model(build(route, {"object_id": "0"}))
    hostile = {
        "datasource": world.datasource.pk,
        "user": world.people["reviewer"].pk,
        "group": Group.objects.filter(name__endswith=POLYGLOT).values_list("pk", flat=True).first(),
    }.get(model._meta.model_name)
    pk = hostile or model.objects.filter(**_near_world(model, world)).values_list("pk", flat=True).first()
    return [str(pk)] if pk is not None else ["999999999"]


def _near_world(model: Any, world: World) -> dict[str, Any]:
    fields = {f.name for f in model._meta.get_fields()}
    return {"datasource": world.datasource} if "datasource" in fields else {}


# How to fill each path parameter: a function of the route and the stored objects, giving the values to visit.
def _latest_event_id() -> int:
    from audit.models import AuditEvent

    return int(AuditEvent.objects.order_by("-id").values_list("pk", flat=True)[0])


PATH_VALUES: dict[str, Callable[[Route, World], list[str]]] = {
    "ticket_id": lambda route, world: [str(pk) for pk in world.tickets],
    "export_id": lambda route, world: [str(world.export)],
    # An event's page, and its reveal action (POST only): the hostile read, and the newest event (its outcome).
    "event_id": lambda route, world: [str(world.event), str(_latest_event_id())],
    "session_id": lambda route, world: [world.session],
    "period_id": lambda route, world: [str(pk) for pk in world.reviews],
    "finding_id": lambda route, world: [str(world.finding)],  # a finding's note (POST only)
    "id": lambda route, world: [str(world.people["reviewer"].pk)],  # the admin's password form of a user
    "object_id": _admin_objects,
    "content_type_id": lambda route, world: [str(ContentType.objects.get_for_model(DataSource).pk)],
    "app_label": lambda route, world: sorted({model._meta.app_label for model in admin.site._registry}),
    "url": lambda route, world: [f"no/such/page/{quote(POLYGLOT)}"],  # the admin's catch-all
}
# For the admin's "view on site" redirect (content type, object): the object belongs to that content type.
PAIRED = {
    ("content_type_id", "object_id"): lambda world: [
        (str(ContentType.objects.get_for_model(DataSource).pk), str(world.datasource.pk))
    ]
}
# Query values a page understands beyond hostile text: a valid signed Slack link token carrying hostile ids.
EXTRA_QUERIES: dict[str, Callable[[World], list[dict[str, str]]]] = {
    "slack-link": lambda world: [{"token": world.slack_token}],
}


def urls_for(route: Route, world: World) -> tuple[list[str], list[str]]:
    """(URLs with real stored ids, URLs with hostile text in every path parameter) for one route."""
    names = parameter_names(route)
    missing = [name for name in names if name not in PATH_VALUES]
    if missing:
        raise LookupError(f"{route.describe}: no crawl recipe for path parameter(s) {missing}; add one to PATH_VALUES")
    if not names:
        return [build(route, {})], []
    key = tuple(names)
    combos: list[dict[str, str]]
    if key in PAIRED:
        combos = [dict(zip(names, pair, strict=True)) for pair in PAIRED[key](world)]
    else:
        combos = [{}]
        for name in names:
            combos = [{**combo, name: value} for combo in combos for value in PATH_VALUES[name](route, world)]
    real = [build(route, combo) for combo in combos]
    hostile = [build(route, {name: quote(POLYGLOT, safe="") for name in names})]
    return real, hostile


def _call_target(callback: Any) -> Any:
    return getattr(callback, "view_class", None) or getattr(callback, "cls", None) or callback


def check_recipes(world: World) -> list[tuple[Route, list[str], list[str]]]:
    """Every route with the URLs to visit; each real URL must resolve back to its own route."""
    planned = []
    for route in routes():
        real, hostile = urls_for(route, world)
        for url in real:
            try:
                match = resolve(url.split("?")[0])
            except Resolver404 as exc:
                raise AssertionError(f"{route.describe}: the crawl built {url!r}, which does not resolve") from exc
            assert _call_target(match.func) == _call_target(route.callback), (route.describe, url)
        planned.append((route, real, hostile))
    return planned


# --- Which query parameters to send --------------------------------------------------------------------------


def parameters_read_by_the_code() -> set[str]:
    """Names the code reads from a query string: ``….GET.get("x")``, ``….GET["x"]``, ``….query_params.get("x")``."""
    names: set[str] = set()
    for package in SOURCE_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                target, key = None, None
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                    target, key = node.func.value, node.args[0]
                elif isinstance(node, ast.Subscript):
                    target, key = node.value, node.slice
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr in ("GET", "query_params")
                    and isinstance(key, ast.Constant)
                    and isinstance(key.value, str)
                ):
                    names.add(key.value)
    return names


# Query parameters the page itself offers: fields of its GET forms, and parameters of its same-origin links.
DISCOVER = """() => {
  const names = new Set();
  document.querySelectorAll("form").forEach((form) => {
    if ((form.getAttribute("method") || "get").toLowerCase() !== "get") return;
    const fields = form.querySelectorAll("input[name], select[name], textarea[name], button[name]");
    fields.forEach((el) => names.add(el.name));
  });
  document.querySelectorAll("a[href]").forEach((a) => {
    try {
      const url = new URL(a.href);
      if (url.origin === location.origin) url.searchParams.forEach((_, k) => names.add(k));
    } catch (error) {}
  });
  return Array.from(names);
}"""

# Markup that a payload became, whether or not the CSP then stopped it: a script element that would run
# (json_script's type="application/json" would not), an event handler attribute, a javascript: URL where a
# URL is followed (an input's value may hold any text).
INJECTED = r"""() => {
  const found = [];
  const urls = new Set(["href", "src", "action", "formaction", "xlink:href", "data", "poster", "background", "srcdoc"]);
  const runnable = (type) => !type || /^(text|application)\/(java|ecma)script$|^module$/i.test(type.trim());
  for (const el of document.querySelectorAll("*")) {
    if (el.tagName === "SCRIPT" && runnable(el.getAttribute("type")) && el.textContent.includes("__pwned"))
      found.push(`<script>${el.textContent.slice(0, 60)}`);
    for (const attribute of el.attributes) {
      if (!attribute.value.includes("__pwned")) continue;
      const runsAsUrl = urls.has(attribute.name.toLowerCase()) && /^\s*javascript:/i.test(attribute.value);
      if (/^on/i.test(attribute.name) || runsAsUrl)
        found.push(`<${el.tagName.toLowerCase()} ${attribute.name}="${attribute.value.slice(0, 60)}">`);
    }
  }
  return found;
}"""


# --- The crawl -----------------------------------------------------------------------------------------------


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    visits: int = 0
    html_responses: int = 0

    def add(self, problem: str) -> None:
        if problem not in self.problems:
            self.problems.append(problem)


@dataclass(frozen=True)
class Landing:
    """What one visit ended on: the status class and content type, to tell when a parameter switched a page."""

    status: int
    content_type: str
    shown: tuple[str, ...]

    @property
    def kind(self) -> tuple[int, str]:
        return self.status // 100, self.content_type


class Visitor:
    """One role's browser context, under the site's real CSP: visits URLs and records what went wrong."""

    def __init__(self, chromium: Any, base: str, user: Any | None, role: str, found: Findings) -> None:
        self.base, self.role, self.found = base, role, found
        self.context = browser_context(chromium, base, user)
        self._new_page()
        self.current = ""
        self.last_document: tuple[int, str] = (0, "")

    def _new_page(self) -> None:
        if getattr(self, "page", None) is not None:
            self.page.close()
        self.page = self.context.new_page()
        self.page.on("response", self._check_response)
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.found.add(f"{self.role} {self.current[:160]}: a dialog opened: {dialog.message[:80]}")
        dialog.dismiss()

    def _check_response(self, response: Any) -> None:
        if not response.url.startswith((self.base, "data:")):
            self.found.add(f"{self.role} {self.current[:160]}: a request left the site: {response.url[:120]}")
            return
        if response.request.resource_type not in ("document", "fetch", "xhr"):
            return
        headers = response.headers
        if response.request.resource_type == "document" and response.frame == self.page.main_frame:
            self.last_document = (response.status, headers.get("content-type", "").split(";")[0])
        if headers.get("content-type", "").startswith("text/html"):
            self.found.html_responses += 1
            if EXPECTED_CSP not in headers.get("content-security-policy", ""):
                self.found.add(f"{self.role}: HTML without the CSP header: {response.url[:160]}")

    def visit(self, url: str) -> Landing:
        self.current = url
        self.found.visits += 1
        self.last_document = (0, "")
        try:
            response = self.page.goto(self.base + url, wait_until="load", timeout=30_000)
            self.page.wait_for_timeout(60)  # deferred scripts' fetches, failed images' error handlers
        except Exception as exc:
            return self._not_shown(url, str(exc))
        status = response.status if response else 0
        content_type = (response.headers.get("content-type", "") if response else "").split(";")[0]
        if status >= 500:
            self.found.add(f"{self.role} {url[:200]}: HTTP {status}")
        try:
            ran = self.page.evaluate("typeof window.__pwned !== 'undefined'")
            injected = self.page.evaluate(INJECTED) if content_type == "text/html" else []
            shown = self.page.evaluate(DISCOVER) if content_type == "text/html" else []
        except Exception as exc:  # navigated away by script mid-check
            self.found.add(f"{self.role} {url[:160]}: could not be inspected: {str(exc).splitlines()[0][:120]}")
            return Landing(status, content_type, ())
        if ran:
            self.found.add(f"{self.role} {url[:200]}: INJECTED SCRIPT RAN (now at {self.page.url[:160]})")
        for markup in injected:
            self.found.add(f"{self.role} {url[:200]}: payload became markup: {markup}")
        return Landing(status, content_type, tuple(shown))

    def _not_shown(self, url: str, error: str) -> Landing:
        """A response the browser does not display: a file (downloaded) or an error status with no body
        (``require_POST``'s 405). Neither is a page; anything else that fails to load is a finding."""
        status, content_type = self.last_document
        routine = "Download is starting" in error or "ERR_HTTP_RESPONSE_CODE_FAILURE" in error
        if not routine or status >= 500:
            self.found.add(f"{self.role} {url[:160]}: did not load ({status}): {error.splitlines()[0][:160]}")
        self._new_page()  # Chromium's own error page would swallow the next navigation
        return Landing(status, content_type if "Download" not in error else "download", ())

    def close(self) -> None:
        self.context.close()


def with_query(url: str, names: list[str] | set[str]) -> str:
    return f"{url}?{urlencode(dict.fromkeys(sorted(names), QUERY_VALUE))}" if names else url


def crawl_url(visitor: Visitor, url: str, names: set[str], switches: set[str] | None) -> set[str] | None:
    """Every name at once; names the page shows that were not sent, again; then, when the hostile load ended
    somewhere else than a plain load does (``?format=<x>`` is a 404 for DRF, ``?script`` turns the API docs
    into JavaScript), find the parameters that switch the page by halving, and send the rest without them.

    ``switches``: what an earlier visit of the same pattern found (then each is sent alone, no search);
    returns what this visit knows, for the next one.
    """
    if switches is not None:
        visitor.visit(with_query(url, names - switches))
        for name in sorted(switches):
            visitor.visit(with_query(url, [name]))
        return switches
    hostile = visitor.visit(with_query(url, names))
    if set(hostile.shown) - names:
        names |= set(hostile.shown)  # kept for the pages after this one too
        hostile = visitor.visit(with_query(url, names))
    if hostile.status < 400 and hostile.content_type == "text/html":
        return None
    plain = visitor.visit(url)
    if plain.kind == hostile.kind:
        return set()

    def switching(group: list[str]) -> set[str]:
        if visitor.visit(with_query(url, group)).kind == plain.kind:
            return set()
        if len(group) == 1:
            return set(group)
        half = len(group) // 2
        return switching(group[:half]) | switching(group[half:])

    ordered = sorted(names)
    half = len(ordered) // 2
    found = switching(ordered[:half]) | switching(ordered[half:])  # each leaf visit sent one alone
    if names - found:
        visitor.visit(with_query(url, names - found))
    return found


def resolves(url: str) -> bool:
    try:
        resolve(url.split("?")[0])
    except Resolver404:
        return False
    return True


def roles_for(route: Route) -> tuple[str, ...]:
    view = _call_target(route.callback)
    sessionless = isinstance(view, type) and issubclass(view, APIView)
    if sessionless and not any(issubclass(scheme, SessionAuthentication) for scheme in view.authentication_classes):
        return SESSIONLESS_ROLES
    return ROLES_BY_NAMESPACE.get(route.namespace, ROLES)


def crawl(chromium: Any, web: Any, world: World) -> Findings:
    found = Findings()
    planned = check_recipes(world)
    names = parameters_read_by_the_code() | GENERIC_PARAMETERS  # grows with what pages show
    switches: dict[Route, set[str]] = {}  # per pattern, the parameters that turn it into another page
    for role in ROLES:
        visitor = Visitor(chromium, web.url, world.people.get(role), role, found)
        not_found_seen = False  # a hostile id that no pattern matches gets the same 404 page everywhere
        try:
            for route, real, hostile in planned:
                if role not in roles_for(route):
                    continue
                for url in real:
                    known = crawl_url(visitor, url, names, switches.get(route))
                    if known is not None:
                        switches[route] = known
                    for query in EXTRA_QUERIES.get(route.name, lambda _: [])(world):
                        visitor.visit(f"{url}?{urlencode(query)}")
                for url in hostile:
                    if not resolves(url):
                        if not_found_seen:
                            continue
                        not_found_seen = True
                    visitor.visit(url)
        finally:
            visitor.close()
    return found


def test_every_url_pattern_can_be_crawled(world: World) -> None:
    """Fails when a pattern has a path parameter the crawl cannot fill, instead of skipping that page."""
    planned = check_recipes(world)
    assert len(planned) == len(routes())
    names = {route.name for route, _, _ in planned}
    assert {"home", "queue", "ticket-detail", "audit-search", "audit-replay", "slack-link", "admin:index"} <= names
    assert {"audit-reviews", "audit-review", "audit-review-note", "audit-review-sign-off"} <= names
    assert all(real for _, real, _ in planned)
    reads = parameters_read_by_the_code()
    assert {"datasource", "risk", "age", "token", "before"} <= reads, reads  # the source scan finds them
    with pytest.raises(LookupError, match="no crawl recipe"):
        unknown = Route((type("P", (), {"pattern": "things/<int:thing_id>/"})(),), "thing", lambda: None)
        urls_for(unknown, world)


@pytest.mark.timeout(1500)
def test_no_hostile_input_becomes_markup_or_runs_on_any_page(chromium: Any, web: Any, world: World) -> None:
    found = crawl(chromium, web, world)
    summary = f"{found.visits} visits, {found.html_responses} HTML responses"
    assert found.visits > 300 and found.html_responses > 300, summary
    assert found.problems == [], f"{summary}; {len(found.problems)} problems:\n" + "\n".join(found.problems)


def test_the_crawl_sees_an_injection(chromium: Any, web: Any) -> None:
    """The crawl's own check: a page that lets payloads through is reported, although the CSP stops them."""
    found = Findings()
    visitor = Visitor(chromium, web.url, None, "anonymous", found)
    probe = f"<p>{BREAK_ATTRIBUTE}</p><a href='{QUERY_VALUE}'>x</a><div>{BREAK_SCRIPT}</div>"
    try:
        visitor.page.route(
            f"{web.url}/__probe__*",
            lambda route: route.fulfill(
                status=200,
                content_type="text/html",
                headers={"Content-Security-Policy": "script-src 'self'"},
                body=probe,
            ),
        )
        visitor.visit("/__probe__")
    finally:
        visitor.close()
    injected = [problem for problem in found.problems if "payload became markup" in problem]
    assert any("<img onerror=" in problem for problem in injected), found.problems
    assert any("<script>__pwned=1" in problem for problem in injected), found.problems
    assert any("<a href=" in problem for problem in injected), found.problems
    assert not any("INJECTED SCRIPT RAN" in problem for problem in found.problems)  # the CSP held
