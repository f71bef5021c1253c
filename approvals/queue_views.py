"""The review queue: pending tickets split into "needs my review" and "waiting on others", sorted for triage,
and the one-row fragment the live page fetches when a ticket changes.

No data reaches the page's script except through ``json_script`` and data-* attributes (static/approvals/
queue.js), so the page works under a strict Content-Security-Policy and nothing a URL carries can run.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from approvals.lifecycle import expire_overdue
from approvals.models import Risk, Status, Ticket, TicketQuerySet
from approvals.rules import can_view
from approvals.triage import DEFAULT_SORT, SORTS, Section, queue_row, queue_rows, sort_key, sorted_tickets
from identity.principal import Principal
from identity.roles import Role, has_role
from policy.models import DataSource

AGES = [(15, "15 minutes"), (60, "an hour"), (24 * 60, "a day")]
_AGE_VALUES = frozenset(str(minutes) for minutes, _ in AGES)
SORT_LABELS = {"risk": "risk", "expiry": "expiry", "newest": "newest", "oldest": "oldest", "datasource": "data source"}
RECENT_ROWS = 25


def sees_whole_queue(request: HttpRequest) -> bool:
    """Reviewers and compliance officers see every pending ticket; others only their own requests."""
    return has_role(request.user, Role.REVIEWER) or has_role(request.user, Role.COMPLIANCE)  # type: ignore[arg-type]


def _queue_filters(request: HttpRequest) -> dict[str, str]:
    """The filters as the page and its script use them. Only known values survive: a data source name is
    compared with names, never rendered into a script, and risk, age and sort are allowlisted."""
    datasource = request.GET.get("datasource", "")
    risk = request.GET.get("risk", "") if request.GET.get("risk", "") in Risk.values else ""
    age = request.GET.get("age", "") if request.GET.get("age", "") in _AGE_VALUES else ""
    return {"datasource": datasource, "risk": risk, "age": age, "sort": sort_key(request.GET.get("sort"))}


def _sort_links(filters: dict[str, str]) -> dict[str, str]:
    """The query string of each sort order, keeping the filters (urlencode escapes; the template escapes again)."""
    kept = {key: value for key, value in filters.items() if value and key != "sort"}
    return {sort: urlencode({**kept, "sort": sort}) for sort in SORTS}


def _filtered(tickets: TicketQuerySet, filters: dict[str, str]) -> TicketQuerySet:
    if filters["datasource"]:
        tickets = tickets.filter(datasource__name=filters["datasource"])
    if filters["risk"]:
        tickets = tickets.filter(risk=filters["risk"])
    if filters["age"]:
        tickets = tickets.filter(created_at__gte=timezone.now() - timedelta(minutes=int(filters["age"])))
    return tickets


def _tickets() -> TicketQuerySet:
    return Ticket.objects.select_related("datasource", "agent", "owner")


@login_required
def queue(request: HttpRequest) -> HttpResponse:
    """Pending tickets for reviewers (live: new tickets and others' reviews appear without reload)."""
    principal = Principal(human=request.user)  # type: ignore[arg-type]
    filters = _queue_filters(request)
    sort_links = _sort_links(filters)
    context: dict[str, object] = {
        "filters": filters,
        "datasources": DataSource.objects.order_by("name").values_list("name", flat=True),
        "risks": Risk.values,
        "ages": AGES,
        "default_sort": DEFAULT_SORT,
        "sort_links": sort_links,
        "sort_choices": [(label, sort_links[sort], sort == filters["sort"]) for sort, label in SORT_LABELS.items()],
        # Everything queue.js needs, as JSON in a non-executable <script type="application/json"> (json_script).
        "queue_config": {
            "filters": {key: filters[key] for key in ("datasource", "risk", "age")},
            "sort": filters["sort"],
        },
    }
    tickets = _filtered(_tickets(), filters)
    if not sees_whole_queue(request):
        mine = tickets.filter(owner=principal.human).order_by("-id")[:50]
        return render(request, "approvals/queue.html", {**context, "recent": mine, "is_reviewer": False})
    expire_overdue()
    pending = sorted_tickets(tickets.pending().prefetch_related("reviews__reviewer__groups"), filters["sort"])
    sections = queue_rows(pending, principal)
    recent = tickets.exclude(status=Status.PENDING).order_by("-id")[:RECENT_ROWS]
    return render(
        request,
        "approvals/queue.html",
        {
            **context,
            "needs_me": sections[Section.NEEDS_ME],
            "others": sections[Section.OTHERS],
            "recent": recent,
            "is_reviewer": True,
        },
    )


@login_required
def ticket_row(request: HttpRequest, ticket_id: int) -> HttpResponse:
    """One queue row, for the live queue. ``X-Ticket-Table`` names the table it belongs in for this viewer:
    ``needs-my-review`` or ``waiting-on-others`` while pending, ``recent-tickets`` after."""
    principal = Principal(human=request.user)  # type: ignore[arg-type]
    ticket = _tickets().prefetch_related("reviews__reviewer__groups").filter(pk=ticket_id).first()
    if ticket is None or not can_view(ticket, principal):
        raise Http404("no such ticket")
    if ticket.status == Status.PENDING and sees_whole_queue(request):
        row = queue_row(ticket, principal)
        response = render(request, "approvals/_pending_row.html", {"row": row})
        response["X-Ticket-Table"] = str(row.section)
    else:
        response = render(request, "approvals/_recent_row.html", {"ticket": ticket})
        response["X-Ticket-Table"] = "recent-tickets"
    return response
