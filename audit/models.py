"""Audit events. Written through audit.recorder.record, inside the transaction of the change they describe."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class EventKind(models.TextChoices):
    AUTH_SUCCEEDED = "auth.succeeded", "Authentication succeeded"
    AUTH_FAILED = "auth.failed", "Authentication failed"
    TOKEN_ISSUED = "token.issued", "Token issued"
    TOKEN_REVOKED = "token.revoked", "Token revoked"
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
    REVIEW_REFUSED = "review.refused", "Review refused"
    AUDIT_SEARCHED = "audit.searched", "Audit trail searched"
    POLICY_CHANGED = "policy.changed", "Policy changed"


class Outcome(models.TextChoices):
    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"
    DENIED = "denied", "Denied"
    HELD = "held", "Held for approval"


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def for_ticket(self, ticket_id: int) -> AuditEventQuerySet:
        return self.filter(ticket_id=ticket_id).order_by("id")


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

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["occurred_at"], name="audit_occurred_at"),
            models.Index(fields=["actor", "occurred_at"], name="audit_actor_time"),
            models.Index(fields=["datasource", "occurred_at"], name="audit_datasource_time"),
            # Ticket timelines are read often and most events have no ticket: index only those that do.
            models.Index(fields=["ticket_id"], condition=Q(ticket_id__isnull=False), name="audit_ticket"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=[choice.value for choice in EventKind]), name="audit_kind_known"
            ),
            models.CheckConstraint(
                condition=Q(outcome__in=[choice.value for choice in Outcome]), name="audit_outcome_known"
            ),
            # Every event except a failed sign-in names the accountable human (non-negotiable 2).
            models.CheckConstraint(
                condition=Q(actor__isnull=False) | Q(kind="auth.failed"), name="audit_actor_required"
            ),
            # An agent never appears without the human it acts for.
            models.CheckConstraint(
                condition=Q(agent__isnull=True) | Q(actor__isnull=False), name="audit_agent_has_owner"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.kind} {self.actor_name}"
