"""Server-rendered reviewer pages: a ticket with approve/reject (the queue is approvals.queue_views)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from approvals.lifecycle import TransitionConflict, expire_if_overdue
from approvals.models import Decision, Status, Ticket
from approvals.review import ReviewForbidden, submit_review
from approvals.rules import can_view, review_refusal
from approvals.sql_display import highlighted_sql, touched_phi_columns
from gateway.explain import ExplainRefused, explain_via_gateway
from gateway.rpc import GatewayUnavailable
from identity.authentication import web_context
from identity.principal import Principal
from identity.roles import Role, has_role
from identity.views import signed_in_recently


def _visible_ticket(request: HttpRequest, ticket_id: int) -> tuple[Ticket, Principal]:
    principal = Principal(human=request.user)  # type: ignore[arg-type]
    ticket = Ticket.objects.select_related("datasource", "agent", "owner").filter(pk=ticket_id).first()
    if ticket is None or not can_view(ticket, principal):
        raise Http404("no such ticket")
    return ticket, principal


@login_required
def ticket_estimate(request: HttpRequest, ticket_id: int) -> JsonResponse:
    """Estimated rows the statement affects, from EXPLAIN (never ANALYZE) run by the gateway's read-only role.

    Fetched by the page after it renders, so a slow or absent gateway never delays the ticket itself.
    """
    ticket, principal = _visible_ticket(request, ticket_id)
    try:
        plan = explain_via_gateway(principal, ticket.datasource.name, ticket.sql, context=web_context(request))
    except ExplainRefused as exc:
        return JsonResponse({"error": f"no estimate: {exc}"})
    except GatewayUnavailable:
        return JsonResponse({"error": "no estimate: the gateway did not answer"})
    return JsonResponse(
        {
            "estimated_rows": plan.get("estimated_rows"),
            "explained": plan.get("explained", ""),
            "note": plan.get("note", ""),
        }
    )


@login_required
def ticket_live(request: HttpRequest, ticket_id: int) -> HttpResponse:
    """The parts of a ticket page that change: status, approvals, reviews, execution."""
    ticket, principal = _visible_ticket(request, ticket_id)
    return render(request, "approvals/_ticket_live.html", _ticket_context(ticket, principal, request))


def _ticket_context(ticket: Ticket, principal: Principal, request: HttpRequest) -> dict[str, object]:
    refusal = review_refusal(ticket, principal)
    duration = None
    if ticket.executed_at and ticket.execution_started_at:
        duration = round((ticket.executed_at - ticket.execution_started_at).total_seconds() * 1000)
    return {
        "ticket": ticket,
        "reviews": ticket.reviews.select_related("reviewer"),
        "refusal": refusal,
        "can_review": ticket.status == Status.PENDING and refusal is None,
        "can_replay": has_role(request.user, Role.COMPLIANCE),  # type: ignore[arg-type]
        "duration_ms": duration,
    }


@login_required
def ticket_detail(request: HttpRequest, ticket_id: int) -> HttpResponse:
    ticket, principal = _visible_ticket(request, ticket_id)
    if expire_if_overdue(ticket):
        ticket.refresh_from_db()
    context = _ticket_context(ticket, principal, request)
    context["sql_html"] = highlighted_sql(ticket.sql)
    context["phi_columns"] = touched_phi_columns(ticket)
    return render(request, "approvals/ticket.html", context)


@login_required
@require_POST
def review(request: HttpRequest, ticket_id: int) -> HttpResponse:
    principal = Principal(human=request.user)  # type: ignore[arg-type]
    if not Ticket.objects.filter(pk=ticket_id).exists():
        raise Http404("no such ticket")
    if not signed_in_recently(request, settings.REVIEW_REAUTH_SECONDS):
        # An approval releases a write: it needs the person, not just a browser left signed in. Nothing is
        # recorded; they sign in again and come back to the ticket.
        logout(request)
        messages.info(request, "Sign in again to review: your last sign-in is too old to approve with.")
        return redirect(f"{settings.LOGIN_URL}?{urlencode({'next': f'/tickets/{ticket_id}/'})}")
    try:
        decision = Decision(request.POST.get("decision", ""))
    except ValueError:
        messages.error(request, "Choose approve or reject.")
        return redirect("ticket-detail", ticket_id=ticket_id)
    try:
        submit_review(ticket_id, principal, decision, request.POST.get("comment", "").strip(), web_context(request))
    except ReviewForbidden as exc:
        return HttpResponse(str(exc), status=403)
    except TransitionConflict as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Your review was recorded.")
    return redirect("ticket-detail", ticket_id=ticket_id)
