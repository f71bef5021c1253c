"""``GET /api/v1/audit/events``: search for compliance officers. Every search is itself audited.

The API answers as the search page does (audit.browse): the same filters, the caller's own look-ups hidden
unless asked for, and keyset pages both ways (audit.search_paging)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, views
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from audit import filters
from audit.accounting import LookupRefused, list_disclosures
from audit.models import AuditEvent, AuditEventQuerySet, EventKind
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
    "actor": "a person: username, full name or agent name, any case",
    "agent": "agent name, any case",
    "datasource": "data source name (one that exists or that events name)",
    "kind": "event kind, e.g. ticket.approved, or a family, e.g. ticket (every ticket event)",
    "table": "a table the statement named (schema optional)",
    "phi_type": "a PHI type returned (masked), e.g. ssn",
    "decision": "the policy's verdict: allowed, held or denied",
    "session": "session id (a wire or HTTP session)",
    "ticket": "ticket id",
    "since": "ISO date or date-time (inclusive)",
    "until": "ISO date or date-time (exclusive)",
}
# ``own_searches=shown`` includes the caller's own look-ups (``audit.searched``, ``audit.viewed``), hidden by
# default on the page and in the API alike; the same parameter, so a search's query string means the same in both.
OWN_SEARCHES = "shown"
_FILTERS = [
    *(OpenApiParameter(name, OpenApiTypes.STR, description=text) for name, text in SEARCH_FILTERS.items()),
    OpenApiParameter(
        "own_searches",
        OpenApiTypes.STR,
        enum=[OWN_SEARCHES],
        description="shown: include your own audit searches and event views (left out by default: each search "
        "you make is one, and they crowd out what you look for)",
    ),
]


def record_search(principal: Principal, context: Context, filters: Mapping[str, str], shown_as: str = "") -> None:
    """Every search of the audit trail is itself an audit event (API and web alike). ``shown_as`` says when the
    results left as a file (``csv``) rather than a page."""
    details: dict[str, object] = {"filters": dict(filters)}
    if shown_as:
        details["shown_as"] = shown_as
    with transaction.atomic():
        record(
            EventKind.AUDIT_SEARCHED,
            principal=principal,
            context=context,
            summary=f"audit search ({context.front}{', ' + shown_as if shown_as else ''})",
            details=details,
        )


def search(params: Mapping[str, str]) -> AuditEventQuerySet:
    """The events matching a compliance search; shared by the API, the search page and its CSV download.

    Raises ValidationError naming every filter whose value is outside its choices (audit.filters): an unknown
    kind or PHI type is an error, never a search that quietly finds nothing. Date-times without a zone are read
    in the current time zone (the page activates the zone it shows).
    """
    events = AuditEvent.objects.all()
    errors: dict[str, str] = {}
    if q := params.get("q", "").strip():
        events = events.matching_text(q)
    if actor := params.get("actor", "").strip():
        events = events.by_person(actor)
    if agent := params.get("agent", "").strip():
        events = events.by_agent(agent)
    if datasource := params.get("datasource"):
        if filters.known_datasource(datasource):
            events = events.filter(datasource=datasource)
        else:
            errors["datasource"] = "no data source has that name"
    if kind := params.get("kind"):
        if filters.known_kind(kind):
            events = events.of_kind(kind)
        else:
            errors["kind"] = "not an event kind (choose one from the list, e.g. ticket.approved or ticket)"
    if table := params.get("table"):
        events = events.touching_table(table)
    if phi_type := params.get("phi_type"):
        if phi_type in dict(filters.phi_type_choices()):
            events = events.masking_phi_type(phi_type)
        else:
            errors["phi_type"] = "not a PHI type (e.g. ssn, name, birth_date)"
    if decision := params.get("decision"):
        if decision in filters.Decision.values:
            events = events.with_verdict(decision)
        else:
            errors["decision"] = "one of allowed, held, denied"
    if session := params.get("session"):
        events = events.filter(session_id=session)
    if ticket := params.get("ticket"):
        if ticket.isascii() and ticket.isdigit() and len(ticket) < 19:
            events = events.filter(ticket_id=int(ticket))
        else:
            errors["ticket"] = "a ticket id"
    since = until = None
    try:
        since = _moment("since", params.get("since"))
    except ValidationError:
        errors["since"] = "expected an ISO 8601 date or date-time"
    try:
        until = _moment("until", params.get("until"))
    except ValidationError:
        errors["until"] = "expected an ISO 8601 date or date-time"
    if since is not None and until is not None and until <= since:
        errors["until"] = "must be after since"
    if errors:
        raise ValidationError(errors)
    if since is not None:
        events = events.filter(occurred_at__gte=since)
    if until is not None:
        events = events.filter(occurred_at__lt=until)
    return events


class AuditEventListView(generics.ListAPIView[AuditEvent]):
    serializer_class = AuditEventSerializer
    pagination_class = NewestFirst

    def get_queryset(self) -> QuerySet[AuditEvent]:
        events = search(self.request.query_params)
        own = self.request.query_params.get("own_searches", "")
        if own not in ("", OWN_SEARCHES):
            raise ValidationError({"own_searches": f"either {OWN_SEARCHES} or left out"})
        if own != OWN_SEARCHES:
            events = events.hiding_searches_of(principal_of(self.request).human)
        return events

    @extend_schema(parameters=_FILTERS)
    def get(self, request: Request, *args: object, **kwargs: object) -> Response:
        principal: Principal = principal_of(request)
        if principal.is_agent or not has_role(principal.human, Role.COMPLIANCE):
            raise PermissionDenied("only compliance officers can search the audit trail")
        filters = {key: request.query_params[key] for key in request.query_params}
        record_search(principal, request_context(request), filters)
        return super().get(request, *args, **kwargs)


class DisclosuresRequestSerializer(serializers.Serializer[dict[str, str]]):
    datasource = serializers.CharField(max_length=63)
    key_name = serializers.CharField(max_length=40, help_text="the kind of patient key, e.g. patient_id or mrn")
    key = serializers.CharField(max_length=200, trim_whitespace=True, help_text="the patient's key, as stored")


class DisclosuresView(views.APIView):
    """``POST /api/v1/audit/disclosures``: every read of one patient's records (the accounting of disclosures,
    audit.accounting), as the page lists them. A POST, so the patient's key stays out of URLs and access logs;
    the look-up is recorded (``audit.disclosures_listed``) with the pseudonym only."""

    @extend_schema(request=DisclosuresRequestSerializer, responses={200: OpenApiTypes.OBJECT})
    def post(self, request: Request) -> Response:
        principal: Principal = principal_of(request)
        if principal.is_agent or not has_role(principal.human, Role.COMPLIANCE):
            raise PermissionDenied("only compliance officers can list the reads of a patient")
        body = DisclosuresRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            accounting = list_disclosures(
                principal,
                request_context(request),
                body.validated_data["datasource"],
                body.validated_data["key_name"],
                body.validated_data["key"],
            )
        except LookupRefused as error:
            raise ValidationError(error.errors) from None
        return Response(accounting.as_dict())
