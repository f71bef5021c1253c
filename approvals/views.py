"""Server-rendered reviewer pages: the queue and a ticket with approve/reject."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from approvals.lifecycle import TransitionConflict, expire_if_overdue, expire_overdue
from approvals.models import Decision, Status, Ticket
from approvals.review import ReviewForbidden, submit_review
from approvals.rules import can_view, review_refusal
from identity.authentication import web_context
from identity.principal import Principal
from identity.roles import Role, has_role


@login_required
def queue(request: HttpRequest) -> HttpResponse:
    principal = Principal(human=request.user)  # type: ignore[arg-type]
    if not (has_role(request.user, Role.REVIEWER) or has_role(request.user, Role.COMPLIANCE)):
        mine = Ticket.objects.filter(owner=principal.human).select_related("datasource", "agent").order_by("-id")[:50]
        return render(request, "approvals/queue.html", {"pending": [], "recent": mine, "is_reviewer": False})
    expire_overdue()
    pending = Ticket.objects.pending().select_related("datasource", "agent", "owner").order_by("created_at")
    recent = (
        Ticket.objects.exclude(status=Status.PENDING)
        .select_related("datasource", "agent", "owner")
        .order_by("-id")[:25]
    )
    rows = [(ticket, review_refusal(ticket, principal)) for ticket in pending]
    return render(request, "approvals/queue.html", {"pending": rows, "recent": recent, "is_reviewer": True})


@login_required
def ticket_detail(request: HttpRequest, ticket_id: int) -> HttpResponse:
    principal = Principal(human=request.user)  # type: ignore[arg-type]
    ticket = Ticket.objects.select_related("datasource", "agent", "owner").filter(pk=ticket_id).first()
    if ticket is None or not can_view(ticket, principal):
        raise Http404("no such ticket")
    if expire_if_overdue(ticket):
        ticket.refresh_from_db()
    return render(
        request,
        "approvals/ticket.html",
        {
            "ticket": ticket,
            "reviews": ticket.reviews.select_related("reviewer"),
            "refusal": review_refusal(ticket, principal),
            "can_review": ticket.status == Status.PENDING and review_refusal(ticket, principal) is None,
            "can_replay": has_role(request.user, Role.COMPLIANCE),  # type: ignore[arg-type]
        },
    )


@login_required
@require_POST
def review(request: HttpRequest, ticket_id: int) -> HttpResponse:
    principal = Principal(human=request.user)  # type: ignore[arg-type]
    if not Ticket.objects.filter(pk=ticket_id).exists():
        raise Http404("no such ticket")
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
