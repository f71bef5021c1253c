"""Compliance pages: evidence exports with progress and the audited reveal of a statement's literals (search,
event detail and replay are in audit.browse). Compliance officers only; every export and reveal is itself an
audit event."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_date
from django.views.decorators.http import require_http_methods, require_POST
from rest_framework.exceptions import ValidationError

from audit.evidence import ExportFilters
from audit.evidence_jobs import bundle_path, request_export
from audit.models import AuditEvent, EventKind, EvidenceExport, ExportStatus
from audit.recorder import record
from identity.authentication import web_context
from identity.principal import Principal
from identity.roles import Role, require_role


def compliance_officer(request: HttpRequest, why: str = "the audit trail is for compliance officers") -> Principal:
    """The signed-in compliance officer, or 403 naming the role (explicit, not a silent empty page). Every audit
    page (search, replay, exports, activity reviews) checks through here."""
    require_role(request.user, Role.COMPLIANCE, why)  # type: ignore[arg-type]
    return Principal(human=request.user)  # type: ignore[arg-type]


def _day(raw: str, name: str, default: datetime) -> datetime:
    if not raw:
        return default
    day = parse_date(raw)
    if day is None:
        raise ValidationError({name: "a date (YYYY-MM-DD)"})
    return timezone.make_aware(datetime.combine(day, time.min))


@login_required
@require_http_methods(["GET", "POST"])
def exports(request: HttpRequest) -> HttpResponse:
    """The officer's own evidence exports and a form for a new one (GET); POST starts one (also from search)."""
    principal = compliance_officer(request)
    if request.method == "POST":
        return _start_export(request, principal)
    return render(request, "audit/exports.html", {"exports": EvidenceExport.objects.of(principal.human)[:100]})


def _start_export(request: HttpRequest, principal: Principal) -> HttpResponse:
    now = timezone.now()
    try:
        since = _day(request.POST.get("since", ""), "since", now - timedelta(days=30))
        until = _day(request.POST.get("until", ""), "until", now + timedelta(days=1))
    except ValidationError:
        return HttpResponseBadRequest("since and until must be dates (YYYY-MM-DD)")
    if until <= since:
        return HttpResponseBadRequest("until must be after since")
    filters = ExportFilters(
        since=since,
        until=until,
        user=request.POST.get("actor", "").strip() or None,
        datasource=request.POST.get("datasource", "").strip() or None,
    )
    export = request_export(
        principal,  # a compliance officer (checked above): the only role that may ask for revealed literals
        filters,
        web_context(request),
        reveal_literals=request.POST.get("statement_literals") == "revealed",
    )
    return redirect("audit-export", export_id=export.pk)


def _own_export(request: HttpRequest, export_id: int) -> EvidenceExport:
    officer = compliance_officer(request)
    export = EvidenceExport.objects.filter(pk=export_id, requested_by=officer.human).first()
    if export is None:
        raise Http404("no such export")
    return export


@login_required
def export_page(request: HttpRequest, export_id: int) -> HttpResponse:
    return render(request, "audit/export.html", {"export": _own_export(request, export_id)})


@login_required
def export_progress(request: HttpRequest, export_id: int) -> JsonResponse:
    export = _own_export(request, export_id)
    return JsonResponse(
        {
            "status": export.status,
            "progress": export.progress,
            "message": export.message,
            "events": export.events,
            "chain_ok": export.chain_ok,
            "download": export.status == ExportStatus.DONE,
        }
    )


@login_required
def export_download(request: HttpRequest, export_id: int) -> FileResponse:
    export = _own_export(request, export_id)
    if export.status != ExportStatus.DONE:
        raise Http404("not ready")
    path = bundle_path(export)
    if not path.is_file():
        raise Http404("the bundle is no longer there")
    return FileResponse(open(path, "rb"), as_attachment=True, filename=export.file_name)


@login_required
@require_POST
def reveal_literals(request: HttpRequest, event_id: int) -> HttpResponse:
    """Show one event's statement with its literals, once, to a compliance officer; the reveal is audited first.

    Why POST: seeing possibly-PHI literals is an act with a record (``audit.literals_revealed``), not a page a
    link preview or a browser prefetch may load; the page is not cached, so going back does not show it again."""
    principal = compliance_officer(request)
    event = AuditEvent.objects.filter(pk=event_id).first()
    if event is None or not event.statement:
        raise Http404("no such statement")
    with transaction.atomic():
        record(
            EventKind.AUDIT_LITERALS_REVEALED,
            principal=principal,
            context=web_context(request),
            summary=f"literals of event {event.pk} revealed",
            details={"event": event.pk, "event_kind": event.kind, "session": event.session_id},
        )
    response = render(request, "audit/revealed.html", {"event": event})
    response["Cache-Control"] = "no-store"
    return response
