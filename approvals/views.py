"""Server-rendered reviewer pages: a ticket with approve/reject (the queue is approvals.queue_views)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_POST

from approvals import ticket_page
from approvals.lifecycle import TransitionConflict, expire_if_overdue
from approvals.models import Decision, Ticket
from approvals.review import ReviewForbidden, submit_review
from approvals.rules import can_view, review_refusal
from approvals.sql_display import highlighted_sql, touched_phi_columns
from identity.authentication import web_context
from identity.principal import Principal
from identity.views import signed_in_recently


def _visible_ticket(request: HttpRequest, ticket_id: int) -> tuple[Ticket, Principal]:
    principal = Principal(human=request.user)  # type: ignore[arg-type]
    ticket = Ticket.objects.select_related("datasource", "agent", "owner").filter(pk=ticket_id).first()
    if ticket is None or not can_view(ticket, principal):
        raise Http404("no such ticket")
    return ticket, principal


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
