"""``GET /api/v1/audit/events``: search for compliance officers. Every search is itself audited."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from audit.models import AuditEvent, EventKind
from audit.periods import parse_moment
from audit.recorder import Context, record
from audit.search_paging import NewestFirst
from identity.authentication import principal_of, request_context
from identity.principal import Principal
from identity.roles import Role, has_role


class AuditEventSerializer(serializers.ModelSerializer[AuditEvent]):
    # Literals in statements may be PHI: masked here; a compliance officer reveals one event's on its web page.
    statement = serializers.CharField(source="statement_masked", read_only=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "occurred_at",
            "kind",
            "outcome",
            "actor_name",
            "agent_name",
            "datasource",
            "ticket_id",
            "front",
            "source_address",
            "session_id",
            "statement",
            "summary",
            "details",
        ]


def _moment(name: str, raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        return parse_moment(raw)
    except ValueError as exc:
        raise ValidationError({name: str(exc)}) from None


SEARCH_FILTERS = {
    "q": 'full text over statements and summaries (reasons): words, "a phrase", -excluded, or',
    "actor": "username of the accountable human",
    "agent": "agent name",
    "datasource": "data source name",
    "kind": "event kind, e.g. ticket.approved",
    "table": "a table the statement named (schema optional)",
    "phi_type": "a PHI type returned (masked), e.g. ssn",
    "decision": "the policy's verdict: allowed, held or denied",
    "session": "session id (a wire or HTTP session)",
    "ticket": "ticket id",
    "since": "ISO date or date-time (inclusive)",
    "until": "ISO date or date-time (exclusive)",
}
_FILTERS = [OpenApiParameter(name, OpenApiTypes.STR, description=text) for name, text in SEARCH_FILTERS.items()]


def record_search(principal: Principal, context: Context, filters: Mapping[str, str]) -> None:
    """Every search of the audit trail is itself an audit event (API and web alike)."""
    with transaction.atomic():
        record(
            EventKind.AUDIT_SEARCHED,
            principal=principal,
            context=context,
            summary=f"audit search ({context.front})",
            details={"filters": dict(filters)},
        )


def search(params: Mapping[str, str]) -> QuerySet[AuditEvent]:
    """The events matching a compliance search; shared by the API and the search page."""
    events = AuditEvent.objects.all()
    if q := params.get("q", "").strip():
        events = events.matching_text(q)
    if actor := params.get("actor"):
        events = events.filter(actor_name=actor)
    if agent := params.get("agent"):
        events = events.filter(agent_name=agent)
    if datasource := params.get("datasource"):
        events = events.filter(datasource=datasource)
    if kind := params.get("kind"):
        events = events.filter(kind=kind)
    if table := params.get("table"):
        events = events.touching_table(table)
    if phi_type := params.get("phi_type"):
        events = events.masking_phi_type(phi_type)
    if decision := params.get("decision"):
        if decision not in ("allowed", "held", "denied"):
            raise ValidationError({"decision": "one of allowed, held, denied"})
        events = events.with_verdict(decision)
    if session := params.get("session"):
        events = events.filter(session_id=session)
    if ticket := params.get("ticket"):
        if not ticket.isdigit():
            raise ValidationError({"ticket": "a ticket id"})
        events = events.filter(ticket_id=int(ticket))
    if since := _moment("since", params.get("since")):
        events = events.filter(occurred_at__gte=since)
    if until := _moment("until", params.get("until")):
        events = events.filter(occurred_at__lt=until)
    return events


class AuditEventListView(generics.ListAPIView[AuditEvent]):
    serializer_class = AuditEventSerializer
    pagination_class = NewestFirst

    def get_queryset(self) -> QuerySet[AuditEvent]:
        return search(self.request.query_params)

    @extend_schema(parameters=_FILTERS)
    def get(self, request: Request, *args: object, **kwargs: object) -> Response:
        principal: Principal = principal_of(request)
        if principal.is_agent or not has_role(principal.human, Role.COMPLIANCE):
            raise PermissionDenied("only compliance officers can search the audit trail")
        filters = {key: request.query_params[key] for key in request.query_params}
        record_search(principal, request_context(request), filters)
        return super().get(request, *args, **kwargs)
