"""Ticket endpoints of the HTTP API. Access checks are explicit in each view."""

from __future__ import annotations

from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals.lifecycle import TransitionConflict, cancel, expire_if_overdue
from approvals.models import Status, Ticket
from approvals.result_schema import TypedResultSerializer
from approvals.review import ReviewForbidden, submit_review
from approvals.rules import can_view, is_requester
from approvals.serializers import ReviewRequestSerializer, TicketSerializer
from approvals.waiting import capped_timeout, wait_for_change
from audit.models import EventKind
from audit.recorder import Context, record
from identity.authentication import principal_of, request_context
from identity.principal import Principal
from policy.result_values import ResultColumn, typed_rows


def visible_ticket(principal: Principal, ticket_id: int) -> Ticket:
    """The ticket, if ``principal`` may see it (expired first when overdue); NotFound otherwise.

    Plain function: the API views and the MCP tools share it, so the access rule cannot drift between fronts.
    """
    ticket = (
        Ticket.objects.select_related("datasource", "owner", "agent")
        .prefetch_related("reviews__reviewer")
        .filter(pk=ticket_id)
        .first()
    )
    if ticket is None or not can_view(ticket, principal):
        raise NotFound("no such ticket")  # an outsider cannot tell a hidden ticket from a missing one
    if expire_if_overdue(ticket):
        ticket.refresh_from_db()
    return ticket


def requester_ticket(principal: Principal, ticket_id: int) -> Ticket:
    ticket = visible_ticket(principal, ticket_id)
    if not is_requester(ticket, principal):
        raise PermissionDenied("only the requester can do this")
    return ticket


def wait_for_visible_ticket(principal: Principal, ticket: Ticket, timeout_seconds: float) -> Ticket:
    """Long poll on a ticket from ``visible_ticket``: returns as soon as its status changes, or after the
    (capped) timeout."""
    ticket = wait_for_change(ticket, capped_timeout(timeout_seconds))
    return visible_ticket(principal, ticket.pk)  # fresh reviews too


def read_result(principal: Principal, ticket: Ticket, context: Context) -> dict[str, object] | None:
    """The stored (already masked) result of an executed ticket, audited as read; None before execution.

    Values get their JSON types here (policy.result_values), from the types and masks the executor stored with
    the rows, which stay PostgreSQL's text (the wire front returns them as they are).

    Callers check that ``principal`` is the requester (``requester_ticket``).
    """
    if ticket.status != Status.EXECUTED:
        return None
    stored = ticket.result or {}
    with transaction.atomic():
        record(
            EventKind.TICKET_RESULT_READ,
            principal=principal,
            context=context,
            datasource=ticket.datasource.name,
            ticket_id=ticket.pk,
            summary="requester read the masked result",
        )
    rows = stored.get("rows", [])
    described = stored.get("column_types")
    if described is not None:  # stored by an executor that records types; older results stay text
        rows = typed_rows(rows, [ResultColumn.from_description(entry) for entry in described])
    return {
        "columns": stored.get("columns", []),
        "column_types": described,
        "rows": rows,
        "rowcount": ticket.rowcount,
        "truncated": bool(stored.get("truncated", False)),
    }


def _visible_ticket(request: Request, ticket_id: int) -> Ticket:
    return visible_ticket(principal_of(request), ticket_id)


def _requester_ticket(request: Request, ticket_id: int) -> Ticket:
    return requester_ticket(principal_of(request), ticket_id)


class TicketView(APIView):
    @extend_schema(responses=TicketSerializer)
    def get(self, request: Request, ticket_id: int) -> Response:
        return Response(TicketSerializer(_visible_ticket(request, ticket_id)).data)


class TicketWaitView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("timeout", OpenApiTypes.INT, description="seconds to wait (max 60)")],
        responses=TicketSerializer,
    )
    def get(self, request: Request, ticket_id: int) -> Response:
        ticket = _visible_ticket(request, ticket_id)
        try:
            timeout = float(request.query_params.get("timeout", "30"))
        except ValueError:
            return Response({"detail": "timeout must be a number of seconds"}, status=400)
        return Response(TicketSerializer(wait_for_visible_ticket(principal_of(request), ticket, timeout)).data)


class TicketResultView(APIView):
    @extend_schema(
        responses={200: TypedResultSerializer, 409: OpenApiTypes.OBJECT},
        summary="The masked result of an executed ticket (requester only), with typed values.",
    )
    def get(self, request: Request, ticket_id: int) -> Response:
        ticket = _requester_ticket(request, ticket_id)
        result = read_result(principal_of(request), ticket, request_context(request))
        if result is None:
            return Response(
                {"detail": f"ticket is {ticket.status}; no result yet", "status": ticket.status}, status=409
            )
        return Response(result)


class TicketReviewsView(APIView):
    @extend_schema(request=ReviewRequestSerializer, responses={201: TicketSerializer})
    def post(self, request: Request, ticket_id: int) -> Response:
        body = ReviewRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if not Ticket.objects.filter(pk=ticket_id).exists():
            raise NotFound("no such ticket")
        try:
            submit_review(
                ticket_id,
                principal_of(request),
                body.validated_data["decision"],
                body.validated_data["comment"],
                request_context(request),
            )
        except ReviewForbidden as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_403_FORBIDDEN)
        except TransitionConflict as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        ticket = Ticket.objects.select_related("datasource", "owner", "agent").get(pk=ticket_id)
        return Response(TicketSerializer(ticket).data, status=status.HTTP_201_CREATED)


class TicketCancelView(APIView):
    @extend_schema(request=None, responses={200: TicketSerializer})
    def post(self, request: Request, ticket_id: int) -> Response:
        ticket = _requester_ticket(request, ticket_id)
        try:
            cancel(ticket, principal_of(request), request_context(request))
        except TransitionConflict as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        ticket.refresh_from_db()
        return Response(TicketSerializer(ticket).data)
