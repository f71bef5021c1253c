"""Pages about one's own work: "My reviews" (what I decided, and what came of it) and "My requests" (the
tickets of my agents and my own: status, results, Cancel).

Results are the ticket's stored result, masked when it was stored for whoever asked (the agent's masks for an
agent's ticket), read through ``approvals.api.read_result`` so each reading is a ``ticket.result_read`` event,
as on the API. Cancelling is ``approvals.lifecycle.cancel``, the API's own transition and audit event.
"""

from __future__ import annotations

from typing import cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from approvals.api import read_result
from approvals.lifecycle import TransitionConflict, cancel, expire_if_overdue
from approvals.models import Review, Status, Ticket
from approvals.rules import is_requester, still_needed
from identity.authentication import web_context
from identity.principal import Principal

PAGE_SIZE = 20


def _principal(request: HttpRequest) -> Principal:
    return Principal(human=request.user)  # type: ignore[arg-type]


def _expire_overdue(tickets: list[Ticket]) -> None:
    """Lazy expiry for the tickets on this page, so none of them says pending after its time is up."""
    for ticket in tickets:
        if ticket.status == Status.PENDING and expire_if_overdue(ticket):
            ticket.refresh_from_db()


@login_required
def my_reviews(request: HttpRequest) -> HttpResponse:
    """Tickets I reviewed: my decision and comment, when, and what became of the ticket; newest first."""
    reviews = (
        Review.objects.filter(reviewer=_principal(request).human)
        .select_related("ticket__datasource", "ticket__agent", "ticket__owner")
        .order_by("-created_at", "-id")
    )
    page = Paginator(reviews, PAGE_SIZE).get_page(request.GET.get("page"))
    _expire_overdue([review.ticket for review in page])
    return render(request, "approvals/my_reviews.html", {"page": page})


@login_required
def my_requests(request: HttpRequest) -> HttpResponse:
    """Tickets I asked for, myself or through my agents, newest first, with what each still needs."""
    tickets = (
        Ticket.objects.filter(owner=_principal(request).human)
        .select_related("datasource", "agent", "owner")
        .prefetch_related("reviews__reviewer__groups")
        .order_by("-created_at", "-id")
    )
    page = Paginator(tickets, PAGE_SIZE).get_page(request.GET.get("page"))
    _expire_overdue(list(page))
    rows = [(ticket, still_needed(ticket) if ticket.status == Status.PENDING else None) for ticket in page]
    return render(request, "approvals/my_requests.html", {"page": page, "rows": rows})


def _my_ticket(request: HttpRequest, ticket_id: int) -> tuple[Ticket, Principal]:
    """A ticket the signed-in person asked for (directly or through an agent); 404 for anyone else's."""
    principal = _principal(request)
    ticket = Ticket.objects.select_related("datasource", "agent", "owner").filter(pk=ticket_id).first()
    if ticket is None or not is_requester(ticket, principal):
        raise Http404("no such ticket")
    return ticket, principal


@login_required
def my_request_result(request: HttpRequest, ticket_id: int) -> HttpResponse:
    """The executed ticket's stored, masked result (a ``ticket.result_read`` event, as on the API)."""
    ticket, principal = _my_ticket(request, ticket_id)
    result = read_result(principal, ticket, web_context(request))
    labelled: list[list[tuple[str, object]]] = []
    if result is not None:  # each value with its column's name: a phone shows rows as labelled cards
        columns = cast(list[str], result["columns"])
        labelled = [list(zip(columns, values, strict=False)) for values in cast(list[list[object]], result["rows"])]
    context = {"ticket": ticket, "result": result, "labelled_rows": labelled}
    return render(request, "approvals/my_request_result.html", context, status=200 if result is not None else 409)


@login_required
@require_POST
def my_request_cancel(request: HttpRequest, ticket_id: int) -> HttpResponse:
    """Cancel a pending ticket I asked for; the transition and its ``ticket.cancelled`` event are the API's."""
    ticket, principal = _my_ticket(request, ticket_id)
    try:
        cancel(ticket, principal, web_context(request))
    except TransitionConflict as exc:
        messages.error(request, f"Not cancelled: {exc}.")
    else:
        messages.success(request, f"Ticket #{ticket.pk} was cancelled.")
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        back = reverse("my-requests")
    return redirect(back)
