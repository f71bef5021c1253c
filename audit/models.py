"""Audit events. Written through audit.recorder.record, inside the transaction of the change they describe."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchQuery, SearchVector, SearchVectorField
from django.db import models
from django.db.models import Q, Value
from django.db.models.functions import Cast, Concat, Now
from django.utils import timezone

from audit.statement_text import mask_literals

# pg_current_xact_id() is xid8, which has no direct cast to bigint; its text form is the 64-bit number.
TXID_DEFAULT = Cast(
    Cast(models.Func(function="pg_current_xact_id", output_field=models.TextField()), models.TextField()),
    models.BigIntegerField(),
)


class EventKind(models.TextChoices):
    AUTH_SUCCEEDED = "auth.succeeded", "Authentication succeeded"
    AUTH_FAILED = "auth.failed", "Authentication failed"
    TOKEN_ISSUED = "token.issued", "Token issued"
    TOKEN_REVOKED = "token.revoked", "Token revoked"
    ACCOUNT_LINKED = "account.linked", "External account linked (Slack)"
    ACCOUNT_UNLINKED = "account.unlinked", "External account unlinked (Slack)"
    QUERY_SUBMITTED = "query.submitted", "Statement submitted and classified"
    QUERY_EXECUTED = "query.executed", "Read executed"
    QUERY_FAILED = "query.failed", "Read failed"
    QUERY_DENIED = "query.denied", "Statement denied by policy"
    TICKET_CREATED = "ticket.created", "Ticket created"
    TICKET_REVIEWED = "ticket.reviewed", "Ticket reviewed"
    TICKET_APPROVED = "ticket.approved", "Ticket approved"
    TICKET_REJECTED = "ticket.rejected", "Ticket rejected"
    TICKET_CANCELLED = "ticket.cancelled", "Ticket cancelled"
    TICKET_EXPIRED = "ticket.expired", "Ticket expired"
    TICKET_EXECUTION_STARTED = "ticket.execution_started", "Ticket execution started"
    TICKET_EXECUTED = "ticket.executed", "Ticket executed"
    TICKET_FAILED = "ticket.failed", "Ticket execution failed"
    TICKET_RESULT_READ = "ticket.result_read", "Ticket result read"
    # Look-ups the ticket page makes for its reviewers, linked to the ticket and named for the person whose view
    # caused them: never a query.* event, which would say that person ran the ticket's statement.
    TICKET_ESTIMATED = "ticket.estimated", "Ticket row estimate planned (EXPLAIN, not run)"
    TICKET_PREVIEWED = "ticket.previewed", "Ticket masked preview of affected rows shown"
    REVIEW_REFUSED = "review.refused", "Review refused"
    AUDIT_SEARCHED = "audit.searched", "Audit trail searched"
    # One event opened in full on its page (audit.browse.event_detail): a look at a single record, not a search.
    AUDIT_VIEWED = "audit.viewed", "Audit event viewed"
    # A compliance officer listed the reads of one patient (audit.accounting): names the patient's pseudonym and
    # its kind of key, never the key typed.
    AUDIT_DISCLOSURES_LISTED = "audit.disclosures_listed", "Accounting of disclosures looked up"
    AUDIT_REPLAYED = "audit.replayed", "Session replayed"
    AUDIT_EXPORTED = "audit.exported", "Evidence bundle exported"
    AUDIT_PURGED = "audit.purged", "Audit events past retention purged"
    # A statement's literals shown unmasked to a compliance officer (audit.statement_text masks them otherwise).
    AUDIT_LITERALS_REVEALED = "audit.literals_revealed", "Statement literals revealed"
    # A compliance officer certified a period's activity review (audit.activity_review): its payload carries the
    # digest of the findings and notes, so the review cannot change afterwards without the chain showing it.
    AUDIT_REVIEW_SIGNED = "audit.review_signed", "Activity review signed off"
    POLICY_CHANGED = "policy.changed", "Policy changed"


class Outcome(models.TextChoices):
    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"
    DENIED = "denied", "Denied"
    HELD = "held", "Held for approval"


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def for_ticket(self, ticket_id: int) -> AuditEventQuerySet:
        return self.filter(ticket_id=ticket_id).order_by("id")

    def for_session(self, session_id: str) -> AuditEventQuerySet:
        return self.filter(session_id=session_id).order_by("id")

    def matching_text(self, text: str) -> AuditEventQuerySet:
        """Full-text (web-search syntax: words, "phrases", -not, or) over statements and summaries."""
        return self.filter(search_document=SearchQuery(text, config="simple", search_type="websearch"))

    def touching_table(self, table: str) -> AuditEventQuerySet:
        """Statements that named the table, with or without the default schema."""
        name = table.lower()
        names = {name, name.removeprefix("public.")} | ({f"public.{name}"} if "." not in name else set())
        condition = Q()
        for candidate in names:
            condition |= Q(details__contains={"relations": [candidate]})
        return self.filter(condition)

    def masking_phi_type(self, phi_type: str) -> AuditEventQuerySet:
        """Reads whose result carried a column of this PHI type (masked)."""
        return self.filter(details__contains={"phi_types": [phi_type]})

    def disclosing_patient(self, datasource: str, pseudonym: str) -> AuditEventQuerySet:
        """Results that carried the patient with this pseudonym (policy.patient_keys), newest first: containment
        of one pseudonym, which the details' GIN index (jsonb_path_ops) answers without reading other events."""
        return self.filter(
            # A read, one that failed after some rows went out, or an approved statement's stored rows.
            kind__in=(EventKind.QUERY_EXECUTED, EventKind.QUERY_FAILED, EventKind.TICKET_EXECUTED),
            datasource=datasource,
            details__contains={"patients": {"pseudonyms": [pseudonym]}},
        ).order_by("-occurred_at", "-id")

    def with_verdict(self, verdict: str) -> AuditEventQuerySet:
        return self.filter(details__contains={"verdict": verdict})

    def by_person(self, name: str) -> AuditEventQuerySet:
        """Events of the person people call ``name``, in any case: a username, a full name ("Bob Smith") or an
        agent's name. Names are resolved to accounts first, so the search walks the actor and agent indexes
        instead of comparing every event's copied name; the copied name still matches as written (``os:``
        accounts of the command line have no user)."""
        from django.contrib.auth import get_user_model

        from identity.models import Agent

        wanted = " ".join(name.split())
        users = (
            get_user_model()
            .objects.annotate(full_name=Concat("first_name", Value(" "), "last_name"))
            .filter(Q(username__iexact=wanted) | Q(full_name__iexact=wanted))
            .values("pk")
        )
        agents = Agent.objects.filter(name__iexact=wanted).values("pk")
        return self.filter(Q(actor__in=users) | Q(agent__in=agents) | Q(actor_name=wanted))

    def by_agent(self, name: str) -> AuditEventQuerySet:
        """Events of the agent of that name, in any case (or as its copied name was written)."""
        from identity.models import Agent

        agents = Agent.objects.filter(name__iexact=name.strip()).values("pk")
        return self.filter(Q(agent__in=agents) | Q(agent_name=name.strip()))

    def of_kind(self, kind: str) -> AuditEventQuerySet:
        """One kind (``ticket.approved``) or a whole family (``ticket``: every ``ticket.*`` kind)."""
        if "." in kind:
            return self.filter(kind=kind)
        return self.filter(kind__in=[value for value in EventKind.values if value.startswith(f"{kind}.")])

    def hiding_searches_of(self, user: Any) -> AuditEventQuerySet:
        """Without the ``audit.searched``, ``audit.viewed`` and ``audit.disclosures_listed`` events of this person:
        an officer's own look-ups crowd out what they are looking for (each page view, each filter change, each
        event opened and each patient looked up is one)."""
        own = [EventKind.AUDIT_SEARCHED, EventKind.AUDIT_VIEWED, EventKind.AUDIT_DISCLOSURES_LISTED]
        return self.exclude(Q(kind__in=own) & Q(actor=user))


class AuditEvent(models.Model):
    """One thing that happened. Names are copied (not only referenced) so the record outlives renames."""

    occurred_at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=40, choices=EventKind.choices)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.SUCCESS)
    # The accountable human. Null only for failed authentications, where nobody was identified.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_name = models.CharField(max_length=150, blank=True)
    agent = models.ForeignKey("identity.Agent", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    agent_name = models.CharField(max_length=63, blank=True)
    datasource = models.CharField(max_length=63, blank=True)
    ticket_id = models.BigIntegerField(null=True, blank=True)
    front = models.CharField(max_length=10, blank=True)  # http, wire, mcp, web, worker
    source_address = models.GenericIPAddressField(null=True, blank=True)
    session_id = models.CharField(max_length=64, blank=True)
    statement = models.TextField(blank=True)
    summary = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)
    # The inserting transaction's id, set by the database (pg_current_xact_id()). The chain takes events in
    # (txid, id) order once every transaction below a horizon has finished: see audit.chain.
    txid = models.BigIntegerField(db_default=TXID_DEFAULT, editable=False)
    # Full-text search over statements and summaries (reasons, reviewers' comments), kept by the database.
    # The 'simple' configuration: SQL identifiers and codes must match as written, not stemmed as English.
    search_document = models.GeneratedField(
        expression=SearchVector("statement", "summary", config="simple"),
        output_field=SearchVectorField(),
        db_persist=True,
    )

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["occurred_at"], name="audit_occurred_at"),
            models.Index(fields=["actor", "occurred_at"], name="audit_actor_time"),
            models.Index(fields=["datasource", "occurred_at"], name="audit_datasource_time"),
            # Ticket timelines are read often and most events have no ticket: index only those that do.
            models.Index(fields=["ticket_id"], condition=Q(ticket_id__isnull=False), name="audit_ticket"),
            # The chain's cursor: events after the last link, below the horizon.
            models.Index(fields=["txid", "id"], name="audit_chain_order"),
            GinIndex(fields=["search_document"], name="audit_search_document"),
            # Tables touched, PHI types masked, verdicts: containment (@>) and jsonpath (@?) filters on details.
            GinIndex(fields=["details"], opclasses=["jsonb_path_ops"], name="audit_details_paths"),
            models.Index(fields=["agent_name", "occurred_at"], name="audit_agent_time"),
            models.Index(fields=["actor_name", "occurred_at"], name="audit_actor_name_time"),
            models.Index(fields=["kind", "occurred_at"], name="audit_kind_time"),
            models.Index(fields=["session_id", "id"], condition=~Q(session_id=""), name="audit_session"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=[choice.value for choice in EventKind]), name="audit_kind_known"
            ),
            models.CheckConstraint(
                condition=Q(outcome__in=[choice.value for choice in Outcome]), name="audit_outcome_known"
            ),
            # Every event names the accountable human (non-negotiable 2), except a failed sign-in (nobody was
            # identified) and the audit's own exports and purges run from a shell, which name the OS account.
            models.CheckConstraint(
                condition=Q(actor__isnull=False)
                | Q(kind="auth.failed")
                | Q(front="cli", kind__in=["audit.exported", "audit.purged"], actor_name__startswith="os:"),
                name="audit_actor_required",
            ),
            # An agent never appears without the human it acts for.
            models.CheckConstraint(
                condition=Q(agent__isnull=True) | Q(actor__isnull=False), name="audit_agent_has_owner"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.kind} {self.actor_name}"

    @property
    def statement_masked(self) -> str:
        """The statement as audit viewers see it by default: literals and comments masked (audit.statement_text)."""
        return mask_literals(self.statement) or ""


class ChainLink(models.Model):
    """One event's place in the hash chain. Written only by audit.chain.extend_chain, in (txid, id) order.

    ``row_hash`` is the SHA-256 of the event's canonical form (audit.canonical); ``chain_hash`` commits to the
    previous link's value and this row hash. Links are append-only like the events.
    """

    seq = models.BigIntegerField(primary_key=True)
    event = models.OneToOneField(AuditEvent, on_delete=models.PROTECT, related_name="+")
    event_txid = models.BigIntegerField()
    row_hash = models.BinaryField(max_length=32)
    chain_hash = models.BinaryField(max_length=32)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(seq__gte=1), name="audit_link_seq_positive"),
        ]


class CheckpointReason(models.TextChoices):
    PERIODIC = "periodic", "Periodic"
    EXPORT = "export", "Evidence export"
    PURGE = "purge", "Retention purge (the anchor of what remains)"


class Checkpoint(models.Model):
    """A signed statement "the chain's value at position ``seq`` was ``chain_hash``", made with a key held
    outside the database, so rewriting history or cutting the tail cannot be hidden by recomputing hashes."""

    seq = models.BigIntegerField()
    chain_hash = models.BinaryField(max_length=32)
    signed_at = models.CharField(max_length=32)  # the exact text that was signed (ISO 8601, UTC)
    key_id = models.CharField(max_length=16)
    signature = models.BinaryField(max_length=64)
    reason = models.CharField(max_length=10, choices=CheckpointReason.choices, default=CheckpointReason.PERIODIC)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(seq__gte=1), name="audit_checkpoint_seq_positive"),
            # One per position and reason: a purge anchor may share its position with a periodic checkpoint.
            models.UniqueConstraint(fields=["seq", "reason"], name="audit_checkpoint_once"),
            models.CheckConstraint(
                condition=Q(reason__in=[choice.value for choice in CheckpointReason]),
                name="audit_checkpoint_reason_known",
            ),
        ]


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class EvidenceExportQuerySet(models.QuerySet["EvidenceExport"]):
    def of(self, user: Any) -> EvidenceExportQuerySet:
        return self.filter(requested_by=user).order_by("-id")


class EvidenceExport(models.Model):
    """An evidence bundle asked for in the UI, built by a Celery task that reports its progress here."""

    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    filters = models.JSONField()
    status = models.CharField(max_length=10, choices=ExportStatus.choices, default=ExportStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    message = models.TextField(blank=True)
    file_name = models.CharField(max_length=100, blank=True)
    events = models.IntegerField(null=True, blank=True)
    chain_ok = models.BooleanField(null=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = EvidenceExportQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(progress__lte=100), name="export_progress_percent"),
            models.CheckConstraint(
                condition=Q(status__in=[choice.value for choice in ExportStatus]), name="export_status_known"
            ),
            # A finished export has a finish time; an unfinished one does not.
            models.CheckConstraint(
                condition=Q(status__in=["done", "failed"], finished_at__isnull=False)
                | Q(status__in=["queued", "running"], finished_at__isnull=True),
                name="export_finished_when_done",
            ),
        ]


class JournalCursor(models.Model):
    """How far one gateway's audit journal (audit.journal) has been shipped into the event table.

    Moved in the same transaction as the events it covers, so a crash between the two can neither lose an
    event nor ship it twice. ``journal_id`` is random per journal directory: a wiped directory starts a new
    journal instead of being mistaken for one already shipped.
    """

    journal_id = models.CharField(max_length=64, unique=True)
    segment = models.BigIntegerField()
    position = models.BigIntegerField()
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(segment__gte=0, position__gte=0), name="journal_cursor_nonnegative"),
        ]


class ChainCursor(models.Model):
    """Where the chain's sequencer (audit.chain.extend_chain) left off: one row, rewritten and signed by each pass.

    ``scanned_below`` and ``in_flight`` are the pass's snapshot of the cluster: every event of a transaction
    below ``scanned_below`` and not ``in_flight`` had committed (and was chained) or never will exist.
    ``id_mark`` is how far the event id sequence had gone, so a verifier sees whether events were written
    since. ``passed_at`` is the database's clock, as the signed text. Signed with the checkpoint key: whoever
    can write the database cannot make a stalled sequencer look recent, nor make it skip events unnoticed.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    scanned_below = models.BigIntegerField()
    in_flight = ArrayField(models.BigIntegerField(), default=list)
    id_mark = models.BigIntegerField()
    passed_at = models.CharField(max_length=32)
    key_id = models.CharField(max_length=16)
    signature = models.BinaryField(max_length=64)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="audit_chain_cursor_single_row")]


class ReviewStatus(models.TextChoices):
    """Where a review period stands: decided from its dates and sign-off, never stored (it changes with time)."""

    OPEN = "open", "Open"  # the period has not ended: activity is still coming in
    IN_REVIEW = "in_review", "In review"  # ended, not signed off, still within the allowed delay
    OVERDUE = "overdue", "Overdue"  # ended more than ACTIVITY_REVIEW_OVERDUE_DAYS ago, not signed off
    SIGNED_OFF = "signed_off", "Signed off"


class ReviewPeriodQuerySet(models.QuerySet["ReviewPeriod"]):
    def unsigned(self) -> ReviewPeriodQuerySet:
        return self.filter(signed_off_at__isnull=True)

    def overdue(self, now: Any = None) -> ReviewPeriodQuerySet:
        """Ended more than the allowed delay ago and still not signed off."""
        now = now or timezone.now()
        return self.unsigned().filter(ends_at__lt=now - timedelta(days=settings.ACTIVITY_REVIEW_OVERDUE_DAYS))

    def overlapping(self, since: Any, until: Any) -> ReviewPeriodQuerySet:
        return self.filter(starts_at__lt=until, ends_at__gt=since)

    def newest_first(self) -> ReviewPeriodQuerySet:
        return self.order_by("-starts_at", "datasource")


class ReviewPeriod(models.Model):
    """One data source's activity over one period, to be reviewed and signed off (45 CFR 164.308(a)(1)(ii)(D)).

    The data source is named as events name it (not a foreign key): the period outlives a renamed or removed
    data source as its events do. The bounds are stored, not derived, so a change of cadence never moves a
    period that was already reviewed. The sign-off columns are set together, once (a trigger refuses any later
    change to a signed period); ``sign_off_event`` is the chained, signed audit record of the sign-off.
    """

    datasource = models.CharField(max_length=63)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    signed_off_at = models.DateTimeField(null=True, blank=True)
    signed_off_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    sign_off_event = models.OneToOneField(AuditEvent, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    digest = models.CharField(max_length=64, blank=True)  # audit.canonical.review_digest at sign-off

    objects = ReviewPeriodQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["datasource", "starts_at"], name="review_period_once"),
            models.CheckConstraint(condition=Q(ends_at__gt=models.F("starts_at")), name="review_period_ends_after"),
            # Signed off means all of it: when, by whom, the chained record and the digest it certified.
            models.CheckConstraint(
                condition=Q(
                    signed_off_at__isnull=True, signed_off_by__isnull=True, sign_off_event__isnull=True, digest=""
                )
                | Q(
                    signed_off_at__isnull=False,
                    signed_off_by__isnull=False,
                    sign_off_event__isnull=False,
                    digest__regex=r"^[0-9a-f]{64}$",
                ),
                name="review_period_signed_whole",
            ),
        ]
        indexes = [models.Index(fields=["ends_at"], condition=Q(signed_off_at__isnull=True), name="review_unsigned")]

    def __str__(self) -> str:
        return f"{self.datasource} {self.starts_at:%Y-%m-%d} to {self.ends_at:%Y-%m-%d}"

    def status(self, now: Any = None) -> ReviewStatus:
        now = now or timezone.now()
        if self.signed_off_at is not None:
            return ReviewStatus.SIGNED_OFF
        if now < self.ends_at:
            return ReviewStatus.OPEN
        if self.ends_at < now - timedelta(days=settings.ACTIVITY_REVIEW_OVERDUE_DAYS):
            return ReviewStatus.OVERDUE
        return ReviewStatus.IN_REVIEW

    @property
    def last_day(self) -> Any:
        """The period's last day, for people: the stored end is exclusive (midnight after it)."""
        return (self.ends_at - timedelta(microseconds=1)).date()


class FindingKind(models.TextChoices):
    DENIED = "denied", "Denied statements"
    HELD = "held", "Held statement"
    PHI_VOLUME = "phi_volume", "PHI volume outlier"
    OFF_HOURS = "off_hours", "Off-hours access"
    FAILED_SIGN_IN = "failed_sign_in", "Failed sign-ins"
    NEW_DATASOURCE = "new_datasource", "First use of the data source"
    NEW_TABLES = "new_tables", "Tables never touched before"


class Disposition(models.TextChoices):
    PENDING = "pending", "Not yet reviewed"
    EXPLAINED = "explained", "Explained"
    FOLLOW_UP = "follow_up", "Needs follow-up"


class ReviewFindingQuerySet(models.QuerySet["ReviewFinding"]):
    def pending(self) -> ReviewFindingQuerySet:
        return self.filter(disposition=Disposition.PENDING)

    def involving(self, user: Any) -> ReviewFindingQuerySet:
        """Findings about (or decided by) this person: they may neither note them nor sign their period."""
        return self.filter(people__contains=[user.pk])

    def in_queue_order(self) -> ReviewFindingQuerySet:
        return self.order_by("kind", "key")


class ReviewFinding(models.Model):
    """Something in a period's activity that needs a human look, computed from the events
    (audit.review_findings), with the reviewer's disposition and note.

    Facts (``summary``, counts, times) are refreshed from the events until the period is signed off; then a
    trigger freezes every finding of the period, and the sign-off's digest covers them with their notes.
    """

    period = models.ForeignKey(ReviewPeriod, on_delete=models.PROTECT, related_name="findings")
    key = models.CharField(max_length=255)  # stable per period: what the finding is about
    kind = models.CharField(max_length=20, choices=FindingKind.choices)
    subject_name = models.CharField(max_length=150, blank=True)  # the accountable person (or the claimed name)
    agent_name = models.CharField(max_length=63, blank=True)
    # Everyone whose activity or decision the finding is about (user ids): none of them may review it.
    people = ArrayField(models.BigIntegerField(), default=list, blank=True)
    summary = models.TextField()
    event_count = models.IntegerField()
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()
    event_ids = ArrayField(models.BigIntegerField(), default=list, blank=True)  # the first few, for reference
    disposition = models.CharField(max_length=10, choices=Disposition.choices, default=Disposition.PENDING)
    note = models.TextField(blank=True)
    noted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    noted_by_name = models.CharField(max_length=150, blank=True)
    noted_at = models.DateTimeField(null=True, blank=True)

    objects = ReviewFindingQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["period", "key"], name="review_finding_once"),
            models.CheckConstraint(
                condition=Q(kind__in=[choice.value for choice in FindingKind]), name="review_finding_kind_known"
            ),
            models.CheckConstraint(
                condition=Q(disposition__in=[choice.value for choice in Disposition]),
                name="review_finding_disposition_known",
            ),
            # A decided finding says who decided, when, and why. A pending one may keep an earlier note (its
            # facts changed after it was noted) for the reviewer to confirm.
            models.CheckConstraint(
                condition=Q(disposition="pending")
                | (Q(noted_by__isnull=False, noted_at__isnull=False) & ~Q(note="") & ~Q(noted_by_name="")),
                name="review_finding_decided_with_note",
            ),
            models.CheckConstraint(
                condition=Q(event_count__gte=1, last_at__gte=models.F("first_at")), name="review_finding_has_events"
            ),
        ]
