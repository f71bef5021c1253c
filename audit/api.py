"""``GET /api/v1/audit/events``: search for compliance officers. Every search is itself audited."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.timezone import make_aware
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from audit.models import AuditEvent, EventKind
from audit.recorder import record
from identity.authentication import principal_of, request_context
from identity.principal import Principal
from identity.roles import Role, has_role


class AuditEventSerializer(serializers.ModelSerializer[AuditEvent]):
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


class NewestFirst(CursorPagination):
    ordering = "-id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


def _moment(name: str, raw: str | None) -> datetime | None:
    if not raw:
        return None
    moment = parse_datetime(raw)
    if moment is None:
        day = parse_date(raw)
        if day is None:
            raise ValidationError({name: "expected an ISO 8601 date or date-time"})
        moment = datetime(day.year, day.month, day.day)
    return moment if moment.tzinfo else make_aware(moment)


_FILTERS = [
    OpenApiParameter(name, OpenApiTypes.STR, description=text)
    for name, text in [
        ("q", "text in statements and summaries"),
        ("actor", "username of the accountable human"),
        ("datasource", "data source name"),
        ("kind", "event kind, e.g. ticket.approved"),
        ("since", "ISO date or date-time (inclusive)"),
        ("until", "ISO date or date-time (exclusive)"),
    ]
]


class AuditEventListView(generics.ListAPIView[AuditEvent]):
    serializer_class = AuditEventSerializer
    pagination_class = NewestFirst

    def get_queryset(self) -> QuerySet[AuditEvent]:
        params = self.request.query_params
        events = AuditEvent.objects.all()
        if q := params.get("q"):
            events = events.filter(Q(statement__icontains=q) | Q(summary__icontains=q))
        if actor := params.get("actor"):
            events = events.filter(actor_name=actor)
        if datasource := params.get("datasource"):
            events = events.filter(datasource=datasource)
        if kind := params.get("kind"):
            events = events.filter(kind=kind)
        if since := _moment("since", params.get("since")):
            events = events.filter(occurred_at__gte=since)
        if until := _moment("until", params.get("until")):
            events = events.filter(occurred_at__lt=until)
        return events

    @extend_schema(parameters=_FILTERS)
    def get(self, request: Request, *args: object, **kwargs: object) -> Response:
        principal: Principal = principal_of(request)
        if principal.is_agent or not has_role(principal.human, Role.COMPLIANCE):
            raise PermissionDenied("only compliance officers can search the audit trail")
        with transaction.atomic():
            record(
                EventKind.AUDIT_SEARCHED,
                principal=principal,
                context=request_context(request),
                summary="audit search",
                details={"filters": {key: request.query_params[key] for key in request.query_params}},
            )
        return super().get(request, *args, **kwargs)
