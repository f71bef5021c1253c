"""The activity review pages: the periods with their status, one period's findings queue with notes and the
sign-off form. Compliance officers only, checked in every view and again in audit.activity_review."""

from __future__ import annotations

from collections import Counter

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from audit.activity_review import (
    NOTE_LIMIT,
    ReviewRefused,
    ensure_periods,
    note_finding,
    refresh_findings,
    sign_off,
    sign_off_check,
)
from audit.models import Disposition, FindingKind, ReviewFinding, ReviewPeriod, ReviewStatus
from audit.views import compliance_officer
from identity.authentication import web_context

LISTED = 200
OFFICERS_ONLY = "activity reviews are for compliance officers"


@login_required
def review_list(request: HttpRequest) -> HttpResponse:
    compliance_officer(request, OFFICERS_ONLY)
    ensure_periods()
    now = timezone.now()
    periods = list(
        ReviewPeriod.objects.newest_first()
        .select_related("signed_off_by")
        .annotate(
            findings_total=Count("findings"),
            findings_pending=Count("findings", filter=Q(findings__disposition=Disposition.PENDING)),
            findings_follow_up=Count("findings", filter=Q(findings__disposition=Disposition.FOLLOW_UP)),
        )[:LISTED]
    )
    rows = [(period, period.status(now)) for period in periods]
    tally = Counter(status for _, status in rows)
    overdue = list(ReviewPeriod.objects.overdue(now).order_by("ends_at", "datasource"))
    return render(
        request,
        "audit/reviews.html",
        {
            "rows": rows,
            "overdue": overdue,
            "status_counts": [(status, tally[status]) for status in ReviewStatus],
            "ReviewStatus": ReviewStatus,
        },
    )


def _period(period_id: int) -> ReviewPeriod:
    period = ReviewPeriod.objects.select_related("signed_off_by", "sign_off_event").filter(pk=period_id).first()
    if period is None:
        raise Http404("no such review period")
    return period


@login_required
def review_period(request: HttpRequest, period_id: int) -> HttpResponse:
    principal = compliance_officer(request, OFFICERS_ONLY)
    period = _period(period_id)
    refresh_findings(period)
    findings = list(period.findings.in_queue_order().select_related("noted_by"))
    groups = [
        (kind, [finding for finding in findings if finding.kind == kind])
        for kind in FindingKind
        if any(finding.kind == kind for finding in findings)
    ]
    counts = Counter(finding.disposition for finding in findings)
    return render(
        request,
        "audit/review.html",
        {
            "period": period,
            "status": period.status(),
            "ReviewStatus": ReviewStatus,
            "groups": groups,
            "total": len(findings),
            "pending": counts.get(Disposition.PENDING, 0),
            "explained": counts.get(Disposition.EXPLAINED, 0),
            "follow_up": counts.get(Disposition.FOLLOW_UP, 0),
            "own": {finding.pk for finding in findings if principal.human.pk in finding.people},
            "check": sign_off_check(period, principal.human),
            "note_limit": NOTE_LIMIT,
            "dispositions": [(Disposition.EXPLAINED, "Explained"), (Disposition.FOLLOW_UP, "Follow-up")],
        },
    )


@login_required
@require_POST
def review_note(request: HttpRequest, period_id: int, finding_id: int) -> HttpResponse:
    principal = compliance_officer(request, OFFICERS_ONLY)
    raw = request.POST.get("disposition", "")
    try:
        note_finding(
            principal,
            period_id,
            finding_id,
            Disposition(raw) if raw in Disposition.values else Disposition.PENDING,
            request.POST.get("note", ""),
        )
    except ReviewFinding.DoesNotExist:
        raise Http404("no such finding") from None
    except ReviewRefused as exc:
        messages.error(request, f"Not saved: {exc}.")
    else:
        messages.success(request, "Finding marked.")
    return redirect(reverse("audit-review", args=[period_id]) + f"#finding-{finding_id}")


@login_required
@require_POST
def review_sign_off(request: HttpRequest, period_id: int) -> HttpResponse:
    principal = compliance_officer(request, OFFICERS_ONLY)
    try:
        period = sign_off(principal, period_id, web_context(request))
    except ReviewPeriod.DoesNotExist:
        raise Http404("no such review period") from None
    except ReviewRefused as exc:
        messages.error(request, f"Not signed off: {exc}.")
        return redirect("audit-review", period_id=period_id)
    messages.success(request, f"The review of {period} is signed off; its record is in the audit trail.")
    return redirect("audit-reviews")
