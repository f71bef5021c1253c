"""The activity review workflow (45 CFR 164.308(a)(1)(ii)(D)): periods, the findings queue, notes, sign-off.

Every data source's activity is reviewed per period (``ACTIVITY_REVIEW_PERIOD_DAYS``, weekly by default). A
period's findings are computed from its audit events (audit.review_findings) and stored, so a reviewer's
disposition and note stay attached to them; until the sign-off, the facts are refreshed from the events each
time the period is looked at (late events, such as a journal shipped after an outage, are never missed).

The sign-off is an audit event (``audit.review_signed``), hash-chained and signed like every other: its
payload carries the period, the data source, the counts per disposition, who signed and the digest of the
findings with their notes (audit.canonical.review_digest). From then on the database refuses any change to
the period or its findings (triggers in migration 0011), and whoever bypasses that as a superuser is caught by
the digest: ``verify_signed_reviews`` here and ``python -m audit.verify`` on an evidence bundle recompute it.

Who may do what is decided here as well as in the views: only compliance officers note findings and sign off;
nobody notes or signs a finding about their own activity or decisions (its ``people``), and a period with such
a finding must be signed by somebody else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.canonical import review_digest
from audit.models import (
    AuditEvent,
    Disposition,
    EventKind,
    ReviewFinding,
    ReviewPeriod,
)
from audit.recorder import Context, record
from audit.review_findings import Found, findings_for
from identity.principal import Principal
from identity.roles import Role, require_role
from policy.models import DataSource

# Period k of every data source is [EPOCH + k * length, EPOCH + (k + 1) * length): weekly periods start on Monday.
EPOCH = datetime(1970, 1, 5, tzinfo=UTC)
NOTE_LIMIT = 2000
_FACTS = ("kind", "subject_name", "agent_name", "people", "summary", "event_count", "first_at", "last_at", "event_ids")


class ReviewRefused(Exception):
    """Why a note or a sign-off was not taken, in words fit to show the person who asked."""


# --- Periods -------------------------------------------------------------------------------------------------


def period_length() -> timedelta:
    return timedelta(days=settings.ACTIVITY_REVIEW_PERIOD_DAYS)


def period_containing(moment: datetime) -> tuple[datetime, datetime]:
    length = period_length()
    index = (moment - EPOCH) // length
    start = EPOCH + index * length
    return start, start + length


def ensure_periods(now: datetime | None = None) -> int:
    """Create every data source's periods up to the one running now; return how many were created.

    Idempotent (a unique constraint and ON CONFLICT DO NOTHING), so the list page and the hourly task may both
    call it. A data source starts ``ACTIVITY_REVIEW_BACKFILL_PERIODS`` periods back (never before it was
    created); afterwards it goes on from its newest period, so no period is ever skipped.
    """
    now = now or timezone.now()
    length = period_length()
    current, _ = period_containing(now)
    newest = {
        name: start
        for name, start in ReviewPeriod.objects.order_by("datasource", "-starts_at")
        .distinct("datasource")
        .values_list("datasource", "starts_at")
    }
    rows = []
    for name, created_at in DataSource.objects.values_list("name", "created_at"):
        if name in newest:
            start = newest[name] + length
        else:
            start = max(current - settings.ACTIVITY_REVIEW_BACKFILL_PERIODS * length, period_containing(created_at)[0])
        while start <= current:
            rows.append(ReviewPeriod(datasource=name, starts_at=start, ends_at=start + length))
            start += length
    return len(ReviewPeriod.objects.bulk_create(rows, ignore_conflicts=True)) if rows else 0


# --- Findings ------------------------------------------------------------------------------------------------


def refresh_findings(period: ReviewPeriod) -> int:
    """Store the period's findings as the events now say (until it is signed off); return how many are new.

    A finding whose facts changed after it was noted (more denials arrived, a ticket was decided) goes back to
    pending with its note kept: the reviewer confirms the note still holds.
    """
    if period.signed_off_at is not None:
        return 0
    stored = {finding.key: finding for finding in period.findings.all()}
    created, changed = [], []
    for found in findings_for(period.datasource, period.starts_at, min(period.ends_at, timezone.now())):
        facts = _facts(found)
        finding = stored.get(found.key)
        if finding is None:
            created.append(ReviewFinding(period=period, key=found.key, **facts))
        elif any(getattr(finding, name) != value for name, value in facts.items()):
            for name, value in facts.items():
                setattr(finding, name, value)
            finding.disposition = Disposition.PENDING
            changed.append(finding)
    with transaction.atomic():
        ReviewFinding.objects.bulk_create(created, ignore_conflicts=True)
        if changed:
            ReviewFinding.objects.bulk_update(changed, [*_FACTS, "disposition"])
    return len(created)


def _facts(found: Found) -> dict[str, Any]:
    return {
        "kind": found.kind,
        "subject_name": found.subject_name,
        "agent_name": found.agent_name,
        "people": list(found.people),
        "summary": found.summary,
        "event_count": found.event_count,
        "first_at": found.first_at,
        "last_at": found.last_at,
        "event_ids": list(found.event_ids),
    }


def note_finding(
    principal: Principal, period_id: int, finding_id: int, disposition: Disposition, note: str
) -> ReviewFinding:
    """Record a reviewer's disposition and note on one finding of an unsigned period."""
    require_role(principal.human, Role.COMPLIANCE, "activity reviews are for compliance officers")
    if disposition not in (Disposition.EXPLAINED, Disposition.FOLLOW_UP):
        raise ReviewRefused("choose explained or follow-up")
    note = note.strip()
    if not note:
        raise ReviewRefused("write a note: what explains it, or what follow-up is needed")
    if len(note) > NOTE_LIMIT:
        raise ReviewRefused(f"a note is at most {NOTE_LIMIT} characters")
    with transaction.atomic():
        # The period's row lock orders notes and sign-offs: a note never lands between a sign-off's digest and
        # its commit (the triggers take the same lock, whoever writes).
        period = ReviewPeriod.objects.select_for_update().filter(pk=period_id).first()
        finding = ReviewFinding.objects.filter(pk=finding_id, period_id=period_id).first()
        if period is None or finding is None:
            raise ReviewFinding.DoesNotExist
        if period.signed_off_at is not None:
            raise ReviewRefused("this period is signed off: its findings can no longer change")
        if principal.human.pk in finding.people:
            raise ReviewRefused("this finding is about your own activity: another compliance officer must note it")
        updated = (
            ReviewFinding.objects.filter(pk=finding.pk, period__signed_off_at__isnull=True)
            .exclude(people__contains=[principal.human.pk])
            .update(
                disposition=disposition,
                note=note,
                noted_by=principal.human,
                noted_by_name=principal.human.get_username(),
                noted_at=timezone.now(),
            )
        )
        if updated != 1:
            raise ReviewRefused("the finding changed meanwhile; reload the page")
    finding.refresh_from_db()
    return finding


# --- Sign-off ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignOffCheck:
    """Whether a person may sign a period off now, and if not, every reason (the page lists them)."""

    reasons: tuple[str, ...]

    @property
    def allowed(self) -> bool:
        return not self.reasons


def sign_off_check(period: ReviewPeriod, user: Any, now: datetime | None = None) -> SignOffCheck:
    now = now or timezone.now()
    reasons = []
    if period.signed_off_at is not None:
        reasons.append("this period is already signed off")
    if now < period.ends_at:
        reasons.append("the period has not ended yet")
    pending = period.findings.pending().count()
    if pending:
        reasons.append(f"{pending} findings are not yet marked explained or follow-up")
    own = period.findings.involving(user).count()
    if own:
        reasons.append(f"{own} findings concern your own activity: another compliance officer must sign this period")
    return SignOffCheck(tuple(reasons))


def sign_off(principal: Principal, period_id: int, context: Context | None = None) -> ReviewPeriod:
    """Certify the period's review: record the signed, chained sign-off event and freeze the findings.

    Decided once: the period row is locked, the findings refreshed and checked, the event recorded and the
    period marked signed by a conditional update whose count must be one; anything else rolls all of it back.
    """
    require_role(principal.human, Role.COMPLIANCE, "only compliance officers sign activity reviews off")
    if principal.agent is not None:
        raise ReviewRefused("a review is signed off by a person, not an agent")
    with transaction.atomic():
        period = ReviewPeriod.objects.select_for_update().filter(pk=period_id).first()
        if period is None:
            raise ReviewPeriod.DoesNotExist
        if period.signed_off_at is None:
            refresh_findings(period)
        check = sign_off_check(period, principal.human)
        if not check.allowed:
            raise ReviewRefused("; ".join(check.reasons))
        findings = list(period.findings.order_by("key"))
        document = review_document(period, findings)
        digest = review_digest(document)
        event = record_review_signed(principal, context, period, Counter(f.disposition for f in findings), digest)
        updated = ReviewPeriod.objects.filter(pk=period.pk, signed_off_at__isnull=True).update(
            signed_off_at=event.occurred_at, signed_off_by=principal.human, sign_off_event=event, digest=digest
        )
        if updated != 1:
            raise ReviewRefused("this period was signed off meanwhile")
    period.refresh_from_db()
    return period


def record_review_signed(
    principal: Principal, context: Context | None, period: ReviewPeriod, counts: Counter[str], digest: str
) -> AuditEvent:
    """The sign-off's audit event: the one place its kind and payload are put together."""
    findings = {
        "total": sum(counts.values()),
        "explained": counts.get(Disposition.EXPLAINED, 0),
        "follow_up": counts.get(Disposition.FOLLOW_UP, 0),
    }
    return record(
        EventKind.AUDIT_REVIEW_SIGNED,
        principal=principal,
        context=context,
        datasource=period.datasource,
        summary=(
            f"activity review of {period.datasource} for {period.starts_at:%Y-%m-%d} to {period.last_day:%Y-%m-%d} "
            f"signed off: {findings['total']} findings, {findings['explained']} explained, "
            f"{findings['follow_up']} for follow-up"
        ),
        details={
            "review": period.pk,
            "period": {"start": iso(period.starts_at), "end": iso(period.ends_at)},
            "datasource": period.datasource,
            "findings": findings,
            "digest": digest,
            "digest_of": "audit.canonical.review_digest (phigate.audit.review.v1)",
            "signed_by": principal.human.get_username(),
        },
    )


# --- The certified form --------------------------------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    """UTC with microseconds and a Z, as audit.canonical renders event times (a bundle compares them as text)."""
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def review_document(period: ReviewPeriod, findings: Iterable[ReviewFinding]) -> dict[str, Any]:
    """The review as its sign-off certifies it and an evidence bundle carries it (one ``reviews.jsonl`` line)."""
    return {
        "review": period.pk,
        "datasource": period.datasource,
        "period_start": iso(period.starts_at),
        "period_end": iso(period.ends_at),
        "findings": [
            {
                "key": finding.key,
                "kind": str(finding.kind),
                "subject_name": finding.subject_name,
                "agent_name": finding.agent_name,
                "summary": finding.summary,
                "event_count": finding.event_count,
                "first_at": iso(finding.first_at),
                "last_at": iso(finding.last_at),
                "event_ids": list(finding.event_ids),
                "disposition": str(finding.disposition),
                "note": finding.note,
                "noted_by_name": finding.noted_by_name,
                "noted_at": iso(finding.noted_at),
            }
            for finding in sorted(findings, key=lambda finding: finding.key)
        ],
    }


def signed_review_documents(review_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The stored form of these signed reviews, by id (for a bundle; a missing id is simply absent)."""
    periods = ReviewPeriod.objects.filter(pk__in=list(review_ids), signed_off_at__isnull=False)
    documents = {}
    for period in periods:
        documents[period.pk] = review_document(period, period.findings.all())
    return documents


def verify_signed_reviews() -> list[str]:
    """Every signed review's stored findings against the digest its sign-off event certified."""
    problems = []
    for period in ReviewPeriod.objects.filter(signed_off_at__isnull=False).select_related("sign_off_event"):
        event = period.sign_off_event
        certified = (event.details or {}).get("digest") if event is not None else None
        if certified != period.digest:
            problems.append(f"activity review {period.pk} ({period}): its digest differs from its sign-off event's")
        elif certified != review_digest(review_document(period, period.findings.all())):
            problems.append(f"activity review {period.pk} ({period}) changed after its sign-off")
    return problems
