"""Recording a human's review and deciding the ticket's fate."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals.lifecycle import TransitionConflict, expire_if_overdue
from approvals.models import Decision, Review, Status, Ticket
from approvals.notify import publish_change_on_commit
from approvals.rules import approval_complete, review_refusal
from audit import events
from audit.events import Context, StatementOutcome
from audit.models import EventKind, Outcome
from audit.recorder import record
from identity.principal import Principal


class ReviewForbidden(Exception):
    """This principal may not review this ticket (403)."""


def submit_review(ticket_id: int, principal: Principal, decision: Decision, comment: str, context: Context) -> Ticket:
    """Record one review; approve the ticket once enough approvals exist, reject it on the first rejection."""
    ticket = Ticket.objects.select_related("datasource", "owner", "agent").get(pk=ticket_id)
    refusal = review_refusal(ticket, principal)
    if refusal is not None:
        with transaction.atomic():
            record(
                EventKind.REVIEW_REFUSED,
                principal=principal,
                context=context,
                outcome=Outcome.DENIED,
                datasource=ticket.datasource.name,
                ticket_id=ticket.pk,
                summary=refusal,
            )
        raise ReviewForbidden(refusal)
    expire_if_overdue(ticket)

    with transaction.atomic():
        # Lock the ticket row: two reviewers approving at the same moment must each be counted once, and the
        # transition to APPROVED must happen exactly once (the race hoop.dev fixed in its PR #466).
        ticket = Ticket.objects.select_for_update().select_related("datasource").get(pk=ticket_id)
        if ticket.status != Status.PENDING:
            raise TransitionConflict(f"ticket {ticket.pk} is {ticket.status}, no longer pending")
        if ticket.reviews.filter(reviewer=principal.human).exists():
            raise TransitionConflict("you have already reviewed this ticket")
        Review.objects.create(
            ticket=ticket,
            reviewer=principal.human,
            decision=decision,
            comment=comment,
            sql_sha256=ticket.sql_sha256,
            front=context.front or "web",
        )
        record(
            EventKind.TICKET_REVIEWED,
            principal=principal,
            context=context,
            datasource=ticket.datasource.name,
            ticket_id=ticket.pk,
            summary=f"{decision} by {principal.human.get_username()}" + (f": {comment}" if comment else ""),
            details={"decision": str(decision), "comment": comment, "sql_sha256": ticket.sql_sha256},
        )
        now = timezone.now()
        if decision == Decision.REJECT:
            ticket.status, ticket.decided_at = Status.REJECTED, now
            ticket.save(update_fields=["status", "decided_at"])
            events.ticket_outcome(
                StatementOutcome.REFUSED,
                principal,
                context,
                refusal=EventKind.TICKET_REJECTED,
                datasource=ticket.datasource.name,
                ticket_id=ticket.pk,
                summary=f"rejected by {principal.human.get_username()}",
            ).record()
        elif approval_complete(ticket):
            ticket.status, ticket.decided_at = Status.APPROVED, now
            ticket.approval_valid_until = now + timedelta(seconds=settings.APPROVAL_VALIDITY_SECONDS)
            ticket.save(update_fields=["status", "decided_at", "approval_valid_until"])
            record(
                EventKind.TICKET_APPROVED,
                principal=principal,
                context=context,
                datasource=ticket.datasource.name,
                ticket_id=ticket.pk,
                summary=f"approved ({ticket.approvals_required} of {ticket.approvals_required}); "
                f"valid until {ticket.approval_valid_until.isoformat()}",
            )
            ticket_pk = ticket.pk
            transaction.on_commit(lambda: _enqueue_execution(ticket_pk))
        publish_change_on_commit(ticket.pk, ticket.status)
    return ticket


def _enqueue_execution(ticket_id: int) -> None:
    from approvals.tasks import enqueue_execution

    enqueue_execution(ticket_id)  # best effort: if Redis is down, the execution sweep finds the approved ticket
