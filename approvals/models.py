"""Tickets and reviews.

State changes are decided once, in the database: every transition is a conditional UPDATE
(``filter(pk=..., status=...).update(...)``) whose row count says whether this caller won; see
approvals.review, approvals.execution and approvals.lifecycle.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from approvals.params import StatementParams


class Status(models.TextChoices):
    PENDING = "pending", "Pending review"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"
    EXECUTING = "executing", "Executing"
    EXECUTED = "executed", "Executed"
    FAILED = "failed", "Failed"


FINAL_STATUSES = frozenset({Status.REJECTED, Status.EXPIRED, Status.CANCELLED, Status.EXECUTED, Status.FAILED})


class Risk(models.TextChoices):
    LOW = "low", "Low"
    MODERATE = "moderate", "Moderate"
    HIGH = "high", "High"
    CRITICAL = "critical", "Critical"


class TicketQuerySet(models.QuerySet["Ticket"]):
    def pending(self) -> TicketQuerySet:
        return self.filter(status=Status.PENDING)

    def overdue(self) -> TicketQuerySet:
        """Pending tickets past their expiry: the expiry sweep turns these into EXPIRED."""
        return self.pending().filter(expires_at__lte=timezone.now())

    def executing(self) -> TicketQuerySet:
        return self.filter(status=Status.EXECUTING)


class Ticket(models.Model):
    datasource = models.ForeignKey("policy.DataSource", on_delete=models.PROTECT, related_name="tickets")
    # The requester: an agent (acting for its owner) or, when agent is null, the owner themself.
    agent = models.ForeignKey("identity.Agent", null=True, blank=True, on_delete=models.PROTECT, related_name="tickets")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="requested_tickets")
    # Key of this ticket in the target's execution ledger; a UUID so several control planes (or test runs)
    # sharing one target can never collide.
    execution_key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    sql = models.TextField()
    # Bind parameters for statements held from the extended query protocol (None for plain SQL text).
    params = models.JSONField(null=True, blank=True)
    # The type of each parameter as PostgreSQL resolved it when the ticket was opened ([{"oid", "name"}], asked of
    # the read role without running anything). Display only: what runs is ``params`` with its declared types.
    param_types = models.JSONField(null=True, blank=True)
    sql_sha256 = models.CharField(max_length=64)
    fingerprint = models.CharField(max_length=32, blank=True)
    reason = models.TextField(blank=True)
    risk = models.CharField(max_length=10, choices=Risk.choices)
    reasons = models.JSONField(default=list)
    statement_types = models.JSONField(default=list)
    relations = models.JSONField(default=list)
    approvals_required = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    front = models.CharField(max_length=10, default="http")
    session_id = models.CharField(max_length=64, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    approval_valid_until = models.DateTimeField(null=True, blank=True)
    execution_started_at = models.DateTimeField(null=True, blank=True)
    executed_at = models.DateTimeField(null=True, blank=True)
    execution_attempts = models.PositiveSmallIntegerField(default=0)

    rowcount = models.BigIntegerField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)  # masked {columns, rows, truncated}; never raw PHI
    error = models.TextField(blank=True)
    # What the ticket page shows about the statement before it runs (approvals.ticket_lookups): the row estimate
    # and a masked preview of the rows it would touch, computed once by the gateway and kept, so that viewing a
    # ticket never queries the target again. None until computed; {"state": "computing", ...} while claimed.
    lookups = models.JSONField(null=True, blank=True)

    objects = TicketQuerySet.as_manager()

    class Meta:
        indexes = [
            # The review queue and the expiry sweep only ever look at pending tickets.
            models.Index(fields=["expires_at"], condition=Q(status="pending"), name="ticket_pending_expiry"),
            # Recovery after an executor crash scans only tickets left executing.
            models.Index(fields=["execution_started_at"], condition=Q(status="executing"), name="ticket_executing"),
            models.Index(fields=["owner", "created_at"], name="ticket_owner_time"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=[s.value for s in Status]), name="ticket_status_known"),
            models.CheckConstraint(condition=Q(risk__in=[r.value for r in Risk]), name="ticket_risk_known"),
            models.CheckConstraint(condition=Q(approvals_required__gte=1), name="ticket_needs_an_approval"),
            models.CheckConstraint(condition=Q(sql_sha256__regex=r"^[0-9a-f]{64}$"), name="ticket_sha256_hex"),
            models.CheckConstraint(condition=Q(expires_at__gt=F("created_at")), name="ticket_expires_after_creation"),
            # Past approval, a ticket always carries the end of its execution window.
            models.CheckConstraint(
                condition=~Q(status__in=["approved", "executing", "executed"]) | Q(approval_valid_until__isnull=False),
                name="ticket_approval_window_set",
            ),
            models.CheckConstraint(
                condition=~Q(status="executed") | Q(executed_at__isnull=False, rowcount__isnull=False),
                name="ticket_executed_has_outcome",
            ),
        ]

    def __str__(self) -> str:
        return f"ticket {self.pk} ({self.status})"

    @property
    def url(self) -> str:
        return f"{settings.PUBLIC_URL}/tickets/{self.pk}/"

    @property
    def approvals_count(self) -> int:
        return self.reviews.filter(decision=Decision.APPROVE).count()

    @property
    def statement_params(self) -> StatementParams | None:
        return None if self.params is None else StatementParams.from_json(self.params)


class Decision(models.TextChoices):
    APPROVE = "approve", "Approve"
    REJECT = "reject", "Reject"

    @property
    def past_tense(self) -> str:
        """ "approved", "rejected": how the page and messages say what a reviewer did."""
        return "approved" if self == Decision.APPROVE else "rejected"


class Review(models.Model):
    ticket = models.ForeignKey(Ticket, on_delete=models.PROTECT, related_name="reviews")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reviews")
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField(blank=True)
    # The digest the reviewer saw: an approval is for these exact bytes and no others.
    sql_sha256 = models.CharField(max_length=64)
    front = models.CharField(max_length=10, default="web")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["ticket", "reviewer"], name="one_review_per_reviewer"),
            models.CheckConstraint(condition=Q(decision__in=[d.value for d in Decision]), name="review_decision_known"),
        ]
        ordering = ["created_at", "id"]


# Slack state (links, messages, channels) lives in approvals.slack but belongs to this app's tables.
from approvals.slack.models import SlackChannel, SlackLink, SlackMessage  # noqa: E402, F401
