"""The site's navigation bar and where each person lands: one table of destinations, each with who may use it.

A destination whose URL name does not resolve (a page another change has not added yet) is left out rather than
breaking every page. Who may use what mirrors the views' own checks; the views still check for themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.contrib.auth.models import AnonymousUser, User
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from audit.models import ReviewPeriod
from identity.models import Agent
from identity.roles import Role, roles_of


@dataclass(frozen=True)
class Person:
    """What navigation needs to know about the signed-in person, read once per page."""

    roles: frozenset[Role]
    owns_agents: bool
    is_staff: bool
    # Activity reviews past their deadline (audit.activity_review): counted for compliance officers only.
    overdue_reviews: int = 0

    @classmethod
    def of(cls, user: User | AnonymousUser | None) -> Person:
        if not isinstance(user, User) or not user.is_active:
            return cls(roles=frozenset(), owns_agents=False, is_staff=False)
        roles = roles_of(user)
        return cls(
            roles=roles,
            owns_agents=Agent.objects.filter(owner=user).exists(),
            is_staff=user.is_staff,
            overdue_reviews=ReviewPeriod.objects.overdue().count() if Role.COMPLIANCE in roles else 0,
        )

    @property
    def is_reviewer(self) -> bool:
        return Role.REVIEWER in self.roles

    @property
    def is_compliance(self) -> bool:
        return Role.COMPLIANCE in self.roles

    @property
    def requests_statements(self) -> bool:
        """An agent owner: someone whose agents ask for statements (engineers, by role, before their first)."""
        return self.owns_agents or Role.ENGINEER in self.roles


@dataclass(frozen=True)
class Destination:
    label: str
    url_name: str
    shown_to: Callable[[Person], bool]
    # URL names (or ``namespace:``) under which this entry is the current one.
    current_on: tuple[str, ...] = ()
    # Something waiting there that the person should see from every page (shown next to the label when not 0).
    alert: Callable[[Person], int] | None = None
    alert_text: str = ""


DESTINATIONS = (
    Destination(
        "Queue",
        "queue",
        lambda person: person.is_reviewer or person.is_compliance,
        ("queue", "home", "ticket-detail"),
    ),
    Destination("My reviews", "my-reviews", lambda person: person.is_reviewer, ("my-reviews",)),
    Destination("My requests", "my-requests", lambda person: person.requests_statements, ("my-requests",)),
    Destination(
        "Audit",
        "audit-search",
        lambda person: person.is_compliance,
        ("audit-search", "audit-replay", "audit-event"),
    ),
    Destination(
        "Exports",
        "audit-exports",
        lambda person: person.is_compliance,
        ("audit-exports", "audit-export", "audit-export-progress"),
    ),
    Destination(
        "Reviews",
        "audit-reviews",
        lambda person: person.is_compliance,
        ("audit-reviews", "audit-review"),
        alert=lambda person: person.overdue_reviews,
        alert_text="overdue",
    ),
    Destination("Admin", "admin:index", lambda person: person.is_staff, ("admin:",)),
)


def optional_reverse(url_name: str) -> str | None:
    """The URL of a name, or None when no such URL exists (yet)."""
    try:
        return reverse(url_name)
    except NoReverseMatch:
        return None


@dataclass(frozen=True)
class NavLink:
    label: str
    url: str
    current: bool
    alert: int = 0
    alert_text: str = ""


def _current_name(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        return ""
    return match.view_name or ""


def navigation(request: HttpRequest, person: Person | None = None) -> list[NavLink]:
    """The links the signed-in person may use, in bar order."""
    person = person or Person.of(getattr(request, "user", None))
    here = _current_name(request)
    links = []
    for destination in DESTINATIONS:
        if not destination.shown_to(person):
            continue
        url = optional_reverse(destination.url_name)
        if url is None:
            continue
        current = any(here == name or (name.endswith(":") and here.startswith(name)) for name in destination.current_on)
        alert = destination.alert(person) if destination.alert is not None else 0
        links.append(NavLink(destination.label, url, current, alert, destination.alert_text))
    return links


def landing_url(person: Person) -> str | None:
    """Where ``/`` sends a person, or None to show the queue in place.

    A reviewer's work is the queue (shown at ``/`` itself); a compliance officer who is not a reviewer starts at
    the audit trail; an agent owner at the requests their agents made. Anyone else gets the queue page, which
    shows them their own requests.
    """
    if person.is_reviewer:
        return None
    if person.is_compliance:
        return optional_reverse("audit-search")
    if person.requests_statements:
        return optional_reverse("my-requests")
    return None
