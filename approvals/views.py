"""Server-rendered reviewer pages: the queue and a ticket with approve/reject."""

from __future__ import annotations

import json
from datetime import timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views.decorators.http import require_POST

from approvals import ticket_page
from approvals.lifecycle import TransitionConflict, expire_if_overdue, expire_overdue
from approvals.models import Decision, Risk, Status, Ticket, TicketQuerySet
from approvals.review import ReviewForbidden, submit_review
from approvals.rules import can_view, review_refusal
from approvals.sql_display import highlighted_sql, touched_phi_columns
from identity.authentication import web_context
from identity.principal import Principal
from identity.roles import Role, has_role
from identity.views import signed_in_recently
from policy.models import DataSource

AGES = [(15, "15 minutes"), (60, "an hour"), (24 * 60, "a day")]


def _sees_whole_queue(request: HttpRequest) -> bool:
    """Reviewers and compliance officers see every pending ticket; others only their own requests."""
    return has_role(request.user, Role.REVIEWER) or has_role(request.user, Role.COMPLIANCE)  # type: ignore[arg-type]


def _queue_filters(request: HttpRequest) -> dict[str, str]:
    datasource = request.GET.get("datasource", "")
    risk = request.GET.get("risk", "") if request.GET.get("risk", "") in Risk.values else ""
    age = request.GET.get("age", "") if request.GET.get("age", "").isdigit() else ""
    return {"datasource": datasource, "risk": risk, "age": age}


def _filtered(tickets: TicketQuerySet, filters: dict[str, str]) -> TicketQuerySet:
    if filters["datasource"]:
        tickets = tickets.filter(datasource__name=filters["datasource"])
    if filters["risk"]:
        tickets = tickets.filter(risk=filters["risk"])
    if filters["age"]:
        tickets = tickets.filter(created_at__gte=timezone.now() - timedelta(minutes=int(filters["age"])))
    return tickets


@login_required
def queue(request: HttpRequest) -> HttpResponse:
    """Pending tickets for reviewers (live: new tickets and others' reviews appear without reload)."""
    principal = Principal(human=request.user)  # type: ignore[arg-type]
    filters = _queue_filters(request)
    context: dict[str, object] = {
        "filters": filters,
        "filters_json": json.dumps(filters),
        "datasources": DataSource.objects.order_by("name").values_list("name", flat=True),
        "risks": Risk.values,
        "ages": AGES,
    }
    tickets = _filtered(Ticket.objects.select_related("datasource", "agent", "owner"), filters)
    if not _sees_whole_queue(request):
        mine = tickets.filter(owner=principal.human).order_by("-id")[:50]
        return render(request, "approvals/queue.html", {**context, "pending": [], "recent": mine, "is_reviewer": False})
    expire_overdue()
    pending = tickets.pending().order_by("created_at")
    recent = tickets.exclude(status=Status.PENDING).order_by("-id")[:25]
    rows = [(ticket, review_refusal(ticket, principal)) for ticket in pending]
    return render(request, "approvals/queue.html", {**context, "pending": rows, "recent": recent, "is_reviewer": True})


def _visible_ticket(request: HttpRequest, ticket_id: int) -> tuple[Ticket, Principal]:
    principal = Principal(human=request.user)  # type: ignore[arg-type]
    ticket = Ticket.objects.select_related("datasource", "agent", "owner").filter(pk=ticket_id).first()
    if ticket is None or not can_view(ticket, principal):
        raise Http404("no such ticket")
    return ticket, principal


@login_required
def ticket_row(request: HttpRequest, ticket_id: int) -> HttpResponse:
    """One queue row, for the live queue: the pending table's row while pending, the recent table's after."""
    ticket, principal = _visible_ticket(request, ticket_id)
    if ticket.status == Status.PENDING and _sees_whole_queue(request):
        response = render(
            request, "approvals/_pending_row.html", {"ticket": ticket, "refusal": review_refusal(ticket, principal)}
        )
        response["X-Ticket-Table"] = "pending"
    else:
        response = render(request, "approvals/_recent_row.html", {"ticket": ticket})
        response["X-Ticket-Table"] = "recent"
    return response


@login_required
def ticket_detail(request: HttpRequest, ticket_id: int) -> HttpResponse:
    """What a reviewer sees and approves (approvals.ticket_page)."""
    ticket, principal = _visible_ticket(request, ticket_id)
    if expire_if_overdue(ticket):
        ticket.refresh_from_db()
    context = ticket_page.page_context(ticket, principal, request)
    if context["draft"] and context["draft"]["after_sign_in"]:
        messages.info(request, "Your comment was kept while you signed in again: check it and submit your review.")
    context["sql_html"] = highlighted_sql(ticket.sql)
    context["phi_columns"] = touched_phi_columns(ticket)
    return render(request, "approvals/ticket.html", context)


@login_required
def ticket_live(request: HttpRequest, ticket_id: int) -> HttpResponse:
    """The parts of a ticket page that change: status, approvals, reviews, execution, look-ups."""
    ticket, principal = _visible_ticket(request, ticket_id)
    return render(request, "approvals/_ticket_live.html", ticket_page.live_context(ticket, principal, request))


@login_required
def ticket_estimate(request: HttpRequest, ticket_id: int) -> JsonResponse:
    """The ticket's look-ups (row estimate, masked preview), computed once by the gateway and kept.

    Fetched by the page after it renders, so a slow or absent gateway never delays the ticket itself. Recorded as
    look-ups linked to the ticket (ticket.estimated, ticket.previewed), never as the viewer's own statement.
    """
    ticket, principal = _visible_ticket(request, ticket_id)
    if expire_if_overdue(ticket):
        ticket.refresh_from_db()
    lookups = ticket_page.lookups_for(ticket, principal, web_context(request))
    html = render_to_string(
        "approvals/_ticket_lookups.html", ticket_page.lookups_context(ticket, lookups, principal, request), request
    )
    estimate = lookups.estimate or {}
    return JsonResponse(
        {
            "state": lookups.state,
            "estimated_rows": estimate.get("rows"),
            "error": estimate.get("unavailable") or lookups.message,
            "html": html,
        }
    )


@login_required
@require_POST
def review(request: HttpRequest, ticket_id: int) -> HttpResponse:
    """Approve or reject from the page. A rejection needs a comment (the requester is told why); a review needs a
    recent sign-in, and the comment typed meanwhile is kept across that sign-in."""
    principal = Principal(human=request.user)  # type: ignore[arg-type]
    ticket = Ticket.objects.select_related("datasource", "owner", "agent").filter(pk=ticket_id).first()
    if ticket is None:
        raise Http404("no such ticket")
    comment = request.POST.get("comment", "").strip()
    try:
        decision = Decision(request.POST.get("decision", ""))
    except ValueError:
        ticket_page.keep_draft(request, ticket_id, principal.human.pk, comment, "")
        messages.error(request, "Choose approve or reject.")
        return redirect("ticket-detail", ticket_id=ticket_id)
    if review_refusal(ticket, principal) is None:
        if decision == Decision.REJECT and not comment:
            messages.error(request, "A rejection needs a comment: tell the requester why, so they can fix it.")
            return redirect("ticket-detail", ticket_id=ticket_id)
        if not signed_in_recently(request, settings.REVIEW_REAUTH_SECONDS):
            # An approval releases a write: it needs the person, not just a browser left signed in. Nothing is
            # recorded; they sign in again and come back to the ticket, their comment kept in the new session.
            logout(request)
            ticket_page.keep_draft(request, ticket_id, principal.human.pk, comment, decision, after_sign_in=True)
            messages.info(request, "Sign in again to review: your last sign-in is too old to approve with.")
            return redirect(f"{settings.LOGIN_URL}?{urlencode({'next': f'/tickets/{ticket_id}/'})}")
    try:
        submit_review(ticket_id, principal, decision, comment, web_context(request))
    except ReviewForbidden as exc:
        return HttpResponse(str(exc), status=403)
    except TransitionConflict as exc:
        messages.error(request, f"Not recorded: {exc}.")
    else:
        messages.success(request, f"You {decision.past_tense} ticket #{ticket_id}.")
    return redirect("ticket-detail", ticket_id=ticket_id)
