"""The compliance officer's audit pages: search (with its CSV download), one event in full, and session replay.

Each view checks the compliance role itself (navigation hiding a link is not a check), and each look is
itself an audit event. Statement literals are masked everywhere here (audit.statement_text); seeing them is
the separate, audited reveal action in audit.views.
"""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from audit import filters
from audit.api import OWN_SEARCHES, SEARCH_FILTERS, record_search, search
from audit.canonical import GENESIS
from audit.events import audit_viewed
from audit.models import AuditEvent, AuditEventQuerySet, ChainLink, Checkpoint, EventKind, EvidenceExport
from audit.periods import parse_moment
from audit.recorder import record
from audit.replay import RESULT_KINDS, replay_steps, statement_params
from audit.search_paging import Page, count_within, newest_page, page_between
from audit.views import compliance_officer
from identity.authentication import web_context
from identity.principal import Principal

PAGE = 50
CSV_BATCH = 1000
REPLAY_LIMIT = 2000  # steps on one replay page; a longer stretch is cut here and says so


def _zone(request: HttpRequest, errors: dict[str, str]) -> ZoneInfo:
    """The zone times are shown and typed in (``?tz=``, one of the offered ones); an unknown one is an error."""
    name = request.GET.get("tz", "").strip()
    zone = filters.zone_named(name) if name else None
    if name and zone is None:
        errors["tz"] = "not one of the offered time zones"
    return zone or ZoneInfo(filters.default_zone_name())


def _tz_query(zone: ZoneInfo) -> str:
    """``?tz=…`` for links to other audit pages, so they keep the zone the officer chose."""
    return "" if zone.key == filters.default_zone_name() else f"?{urlencode({'tz': zone.key})}"


def _event_id(raw: str) -> int | None:
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None


@dataclass
class Search:
    """One search as the page reads it: the filters, the zone, whether the officer's own searches show."""

    filters: dict[str, str]
    zone: ZoneInfo
    own_searches: bool
    errors: dict[str, str] = field(default_factory=dict)

    def query(self, **extra: str | int) -> str:
        """The query string of this search (for paging and the CSV link), with ``extra`` parameters."""
        params: dict[str, str | int] = dict(self.filters)
        if self.zone.key != filters.default_zone_name():
            params["tz"] = self.zone.key
        if self.own_searches:
            params["own_searches"] = OWN_SEARCHES
        return urlencode({**params, **extra})


def _read_search(request: HttpRequest) -> Search:
    errors: dict[str, str] = {}
    zone = _zone(request, errors)
    chosen = {name: request.GET[name].strip() for name in SEARCH_FILTERS if request.GET.get(name, "").strip()}
    own = request.GET.get("own_searches", "")
    if own not in ("", OWN_SEARCHES):
        errors["own_searches"] = "either shown or left out"
    return Search(filters=chosen, zone=zone, own_searches=own == OWN_SEARCHES, errors=errors)


def _matching(wanted: Search, principal: Principal) -> AuditEventQuerySet | None:
    """The events of the search, or None with ``wanted.errors`` saying why not (shown, never "no results")."""
    try:
        with timezone.override(wanted.zone):  # since/until without an offset are read in the page's zone
            events = search(wanted.filters)
    except ValidationError as exc:
        wanted.errors.update(_flatten(exc.detail))
        return None
    if wanted.errors:
        return None
    if not wanted.own_searches:
        events = events.hiding_searches_of(principal.human)
    return events


def _flatten(detail: Any) -> dict[str, str]:
    if isinstance(detail, dict):
        return {
            str(key): " ".join(str(item) for item in (value if isinstance(value, list) else [value]))
            for key, value in detail.items()
        }
    return {"filters": str(detail)}


def _local_input(raw: str, zone: ZoneInfo) -> str:
    """A since/until filter as a ``datetime-local`` input shows it: the moment in the page's zone (a date alone
    is its midnight; one typed with an offset elsewhere is converted). Unreadable text is shown as typed."""
    if not raw:
        return ""
    try:
        with timezone.override(zone):
            moment = parse_moment(raw).astimezone(zone)
    except ValueError:
        return raw
    return moment.strftime("%Y-%m-%dT%H:%M:%S" if moment.second else "%Y-%m-%dT%H:%M")


@login_required
def search_page(request: HttpRequest) -> HttpResponse:
    principal = compliance_officer(request)
    wanted = _read_search(request)
    before = _event_id(request.GET.get("before", "")) if request.GET.get("before") else None
    after = _event_id(request.GET.get("after", "")) if request.GET.get("after") else None
    if request.GET.get("before") and before is None:
        wanted.errors["before"] = "an event id"
    if request.GET.get("after") and after is None:
        wanted.errors["after"] = "an event id"
    events = _matching(wanted, principal)
    page, total = Page([], None, None), None
    if events is not None:
        page = page_between(events, PAGE, before=before, after=after)
        total = count_within(events)
    record_search(principal, web_context(request), wanted.filters)
    with timezone.override(wanted.zone):
        return render(
            request,
            "audit/search.html",
            {
                "search": wanted,
                "filters": wanted.filters,
                "errors": [(SEARCH_LABELS.get(name, name), message) for name, message in wanted.errors.items()],
                "invalid": set(wanted.errors),
                "page": page,
                "total": total,
                "older_url": f"?{wanted.query(before=page.older)}" if page.older is not None else "",
                "newer_url": f"?{wanted.query(after=page.newer)}" if page.newer is not None else "",
                "newest_url": f"?{wanted.query()}",
                "csv_url": f"{_csv_path()}?{wanted.query()}",
                "tz_query": _tz_query(wanted.zone),
                "zone": wanted.zone.key,
                "zone_abbreviation": filters.zone_abbreviation(wanted.zone),
                "since_input": _local_input(wanted.filters.get("since", ""), wanted.zone),
                "until_input": _local_input(wanted.filters.get("until", ""), wanted.zone),
                "kinds": filters.kind_choices(),
                "decisions": filters.Decision.choices,
                "phi_types": filters.phi_type_choices(),
                "datasources": filters.datasource_names(),
                "zones": filters.zone_choices(),
                "exports": EvidenceExport.objects.of(principal.human)[:5],
            },
        )


SEARCH_LABELS = {
    "q": "Text",
    "actor": "Person",
    "agent": "Agent",
    "datasource": "Data source",
    "kind": "Kind",
    "table": "Table",
    "phi_type": "PHI type",
    "decision": "Decision",
    "session": "Session",
    "ticket": "Ticket",
    "since": "From",
    "until": "Until",
    "tz": "Time zone",
    "own_searches": "My searches",
    "before": "Page",
    "after": "Page",
    "part": "Part",
    "event": "Event",
    "gap": "Idle gap",
}


def _csv_path() -> str:
    from django.urls import reverse

    return reverse("audit-search-csv")


# --- CSV ------------------------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "id",
    "occurred_at",
    "kind",
    "kind_label",
    "outcome",
    "decision",
    "actor",
    "agent",
    "datasource",
    "session",
    "ticket",
    "statement_masked",
    "summary",
)


class _Line:
    """csv.writer's file: hands back each line instead of storing it (the response streams them)."""

    def write(self, value: str) -> str:
        return value


def _cell(value: object) -> str:
    """A CSV cell that a spreadsheet shows as text: one starting like a formula is prefixed with an apostrophe
    (a statement or summary is the requester's text, and ``=HYPERLINK(…)`` would run when the file is opened)."""
    text = "" if value is None else str(value)
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_row(event: AuditEvent, zone: ZoneInfo) -> list[str]:
    details = event.details or {}
    return [
        _cell(value)
        for value in (
            event.pk,
            event.occurred_at.astimezone(zone).isoformat(),
            event.kind,
            filters.kind_label(event.kind),
            event.outcome,
            details.get("verdict", "") if isinstance(details.get("verdict"), str) else "",
            event.actor_name,
            event.agent_name,
            event.datasource,
            event.session_id,
            event.ticket_id,
            event.statement_masked,  # the page's masking: literals are revealed only one event at a time
            event.summary,
        )
    ]


def _batch(events: QuerySet[AuditEvent], before: int | None) -> list[AuditEvent]:
    rows, _ = newest_page(events, CSV_BATCH, before)
    return rows


async def _csv_lines(events: QuerySet[AuditEvent], zone: ZoneInfo) -> AsyncIterator[str]:
    """Every matching event, newest first, a batch of keyset-paged rows at a time: memory stays flat however
    many match, and (served over ASGI) the first lines leave before the last batch is read."""
    writer = csv.writer(_Line())
    yield writer.writerow(CSV_COLUMNS)  # type: ignore[func-returns-value]
    before: int | None = None
    while True:
        rows = await sync_to_async(_batch, thread_sensitive=True)(events, before)
        for event in rows:
            yield writer.writerow(_csv_row(event, zone))  # type: ignore[func-returns-value]
        if len(rows) < CSV_BATCH:
            return
        before = rows[-1].pk


@login_required
def search_csv(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """The current search's results, every page, as CSV; the same filters as the page and the same masking."""
    principal = compliance_officer(request)
    wanted = _read_search(request)
    events = _matching(wanted, principal)
    if events is None:
        problems = "; ".join(f"{SEARCH_LABELS.get(name, name)}: {text}" for name, text in wanted.errors.items())
        return HttpResponseBadRequest(f"The search has errors: {problems}", content_type="text/plain; charset=utf-8")
    record_search(principal, web_context(request), wanted.filters, shown_as="csv")
    response = StreamingHttpResponse(_csv_lines(events, wanted.zone), content_type="text/csv; charset=utf-8")
    stamp = timezone.now().astimezone(wanted.zone).strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="audit-events-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    return response


# --- One event ------------------------------------------------------------------------------------------------

# Details that the event page shows in their own sections; the rest are listed as they are.
_SHOWN_DETAILS = frozenset(
    {"verdict", "reasons", "params", "params_shown", "masking", "preview", "relations", "phi_types", "rowcount"}
    | {"duration_ms", "result_sha256", "statement_id", "submitted_event", "patients"}
)


@dataclass(frozen=True)
class ChainPosition:
    link: ChainLink | None
    previous_hash: str
    checkpoint: Checkpoint | None

    @property
    def row_hash(self) -> str:
        return bytes(self.link.row_hash).hex() if self.link else ""

    @property
    def chain_hash(self) -> str:
        return bytes(self.link.chain_hash).hex() if self.link else ""

    @property
    def checkpoint_hash(self) -> str:
        return bytes(self.checkpoint.chain_hash).hex() if self.checkpoint else ""

    @property
    def signature(self) -> str:
        return bytes(self.checkpoint.signature).hex() if self.checkpoint else ""


def _chain_position(event: AuditEvent) -> ChainPosition:
    """Where the event sits in the hash chain, and the first signed checkpoint at or after it (which covers it:
    a checkpoint signs the chain's value, and every earlier link is folded into that value)."""
    link = ChainLink.objects.filter(event=event).first()
    if link is None:
        return ChainPosition(None, "", None)
    previous = ChainLink.objects.filter(seq=link.seq - 1).values_list("chain_hash", flat=True).first()
    if previous is None and link.seq == 1:
        previous = GENESIS
    checkpoint = Checkpoint.objects.filter(seq__gte=link.seq).order_by("seq", "id").first()
    return ChainPosition(link, bytes(previous).hex() if previous is not None else "", checkpoint)


def _related(event: AuditEvent) -> dict[str, list[AuditEvent]]:
    """The statement's other half (its submission, or its outcome) and the ticket's events."""
    details = event.details or {}
    related: dict[str, list[AuditEvent]] = {}
    if event.kind == EventKind.QUERY_SUBMITTED:
        condition = Q(details__contains={"submitted_event": event.pk})
        if isinstance(details.get("statement_id"), str) and details["statement_id"]:
            condition |= Q(details__contains={"statement_id": details["statement_id"]})
        outcomes = AuditEvent.objects.filter(kind__in=RESULT_KINDS, session_id=event.session_id).filter(condition)
        related["Outcome of this statement"] = list(outcomes.order_by("id")[:10])
    elif event.kind in RESULT_KINDS:
        condition = Q(pk=-1)
        submitted = details.get("submitted_event")
        if isinstance(submitted, int):
            condition |= Q(pk=submitted)
        if isinstance(details.get("statement_id"), str) and details["statement_id"]:
            condition |= Q(session_id=event.session_id, details__contains={"statement_id": details["statement_id"]})
        statement = AuditEvent.objects.filter(kind=EventKind.QUERY_SUBMITTED).filter(condition)
        related["The statement"] = list(statement.order_by("id")[:10])
    if event.ticket_id is not None:
        related[f"Ticket #{event.ticket_id}"] = list(AuditEvent.objects.for_ticket(event.ticket_id)[:100])
    return related


def _other_details(details: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        (key, value if isinstance(value, str) else json.dumps(value, indent=1, sort_keys=True, default=str))
        for key, value in sorted(details.items())
        if key not in _SHOWN_DETAILS
    ]


@login_required
def event_detail(request: HttpRequest, event_id: int) -> HttpResponse:
    principal = compliance_officer(request)
    errors: dict[str, str] = {}
    zone = _zone(request, errors)
    event = AuditEvent.objects.filter(pk=event_id).first()
    if event is None:
        raise Http404("no such event")
    with transaction.atomic():  # reading one event in full is itself audited, before the page shows it
        audit_viewed(principal, web_context(request), event_id=event.pk).record()
    details = event.details or {}
    with timezone.override(zone):
        return render(
            request,
            "audit/event.html",
            {
                "event": event,
                "kind_label": filters.kind_label(event.kind),
                "errors": [(SEARCH_LABELS.get(name, name), text) for name, text in errors.items()],
                "zone": zone.key,
                "zone_abbreviation": filters.zone_abbreviation(zone, event.occurred_at),
                "zones": filters.zone_choices(),
                "verdict": details.get("verdict") if isinstance(details.get("verdict"), str) else "",
                "reasons": [str(reason) for reason in details.get("reasons") or [] if reason is not None],
                "relations": [str(name) for name in details.get("relations") or []],
                "phi_types": [str(name) for name in details.get("phi_types") or []],
                "params": statement_params(details),
                "masking": details.get("masking") if isinstance(details.get("masking"), dict) else {},
                "preview": details.get("preview") if isinstance(details.get("preview"), dict) else {},
                "result": {key: details[key] for key in ("rowcount", "duration_ms", "result_sha256") if key in details},
                "patients": details.get("patients") if isinstance(details.get("patients"), dict) else None,
                "other_details": _other_details(details),
                "chain": _chain_position(event),
                "related": _related(event),
                "replay_url": _replay_url(event),
            },
        )


def _replay_url(event: AuditEvent) -> str:
    if not event.session_id:
        return ""
    from django.urls import reverse

    return f"{reverse('audit-replay', args=[event.session_id])}?{urlencode({'event': event.pk})}"


# --- Replay ---------------------------------------------------------------------------------------------------


@dataclass
class ReplayPart:
    number: int
    start: datetime
    end: datetime
    events: int
    url: str
    current: bool


@login_required
def session_replay(request: HttpRequest, session_id: str) -> HttpResponse:
    """One session's events as a player steps through them. A day-long HTTP session (one per agent per day when
    the client names none) is split where the agent was idle longer than the gap: one stretch of work per page."""
    principal = compliance_officer(request)
    errors: dict[str, str] = {}
    zone = _zone(request, errors)
    moments = list(
        AuditEvent.objects.filter(session_id=session_id).order_by("occurred_at").values_list("occurred_at", flat=True)
    )
    if not moments:
        raise Http404("no such session")
    gap = _idle_gap(request, errors)
    split = filters.is_day_session(session_id)
    if split:
        parts = filters.split_at_idle_gaps(moments, timedelta(minutes=gap))
    else:
        parts = [filters.Part(1, moments[0], moments[-1], len(moments))]
    chosen = _chosen_part(request, session_id, parts, errors)
    events = list(
        AuditEvent.objects.for_session(session_id).filter(occurred_at__gte=chosen.start, occurred_at__lte=chosen.end)[
            :REPLAY_LIMIT
        ]
    )
    ticket_ids = {event.ticket_id for event in events if event.ticket_id is not None}
    approvals = list(AuditEvent.objects.filter(ticket_id__in=ticket_ids).exclude(session_id=session_id).order_by("id"))
    with transaction.atomic():
        record(
            EventKind.AUDIT_REPLAYED,
            principal=principal,
            context=web_context(request),
            summary=f"session {session_id} replayed",
            details={"session": session_id, "events": len(events), "part": chosen.number, "parts": len(parts)},
        )
    target = _event_id(request.GET.get("event", ""))
    steps = replay_steps(events, approvals)
    base = {"tz": zone.key} if zone.key != filters.default_zone_name() else {}
    if split and gap != filters.default_idle_gap():
        base["gap"] = str(gap)
    first, last = events[0], events[-1]
    with timezone.override(zone):
        return render(
            request,
            "audit/replay.html",
            {
                "session_id": session_id,
                "steps": steps,
                "first": first,
                "last": last,
                "count": len(events),
                "cut": chosen.events > len(events),
                "target": target,
                "errors": [(SEARCH_LABELS.get(name, name), text) for name, text in errors.items()],
                "zone": zone.key,
                "zone_abbreviation": filters.zone_abbreviation(zone, first.occurred_at),
                "zones": filters.zone_choices(),
                "split": split,
                "gap": gap,
                "gaps": filters.idle_gap_choices(),
                "part": chosen,
                "parts": [
                    ReplayPart(
                        part.number,
                        part.start,
                        part.end,
                        part.events,
                        f"?{urlencode({**base, 'part': part.number})}",
                        part.number == chosen.number,
                    )
                    for part in parts
                ],
            },
        )


def _idle_gap(request: HttpRequest, errors: dict[str, str]) -> int:
    raw = request.GET.get("gap", "")
    if not raw:
        return filters.default_idle_gap()
    minutes = _event_id(raw)
    if minutes is None or minutes not in filters.idle_gap_choices():
        errors["gap"] = f"one of {', '.join(str(choice) for choice in filters.idle_gap_choices())} minutes"
        return filters.default_idle_gap()
    return minutes


def _chosen_part(
    request: HttpRequest, session_id: str, parts: list[filters.Part], errors: dict[str, str]
) -> filters.Part:
    """The part asked for (``?part=``), or the one holding ``?event=`` (search results link there), or the first."""
    raw_part, raw_event = request.GET.get("part", ""), request.GET.get("event", "")
    if raw_part:
        number = _event_id(raw_part)
        if number is not None and 1 <= number <= len(parts):
            return parts[number - 1]
        errors["part"] = f"a part from 1 to {len(parts)}"
    if raw_event:
        event_id = _event_id(raw_event)
        moment = (
            AuditEvent.objects.filter(pk=event_id, session_id=session_id).values_list("occurred_at", flat=True).first()
            if event_id is not None
            else None
        )
        if moment is not None:
            return next(part for part in parts if part.start <= moment <= part.end)
        errors["event"] = "not an event of this session"
    return parts[0]
