"""Opening, cancelling and expiring tickets (each transition is one conditional UPDATE plus its audit event), and
the sweeps: pending tickets past their window, approved and executing tickets no executor is attending to."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from approvals.execution_lock import tickets_with_live_executor
from approvals.models import Status, Ticket
from approvals.notify import publish_change_on_commit
from approvals.params import StatementParams, shown_params, statement_digest
from approvals.statement_reason import with_statement_reason
from audit import events
from audit.events import Context, StatementOutcome
from audit.models import EventKind
from identity.principal import Principal
from policy.models import DataSource


class TransitionConflict(Exception):
    """The ticket is no longer in a state that allows this action (409)."""


def open_ticket(
    *,
    principal: Principal,
    datasource: DataSource,
    sql: str,
    params: StatementParams | None = None,
    param_types: Sequence[dict[str, object]] | None = None,
    reason: str,
    risk: str,
    reasons: Sequence[str],
    statement_types: Sequence[str],
    relations: Sequence[str],
    approvals_required: int,
    fingerprint: str,
    context: Context,
) -> Ticket:
    """Create a pending ticket and its audit event; the caller's transaction covers both.

    ``param_types``: what PostgreSQL resolved each parameter's type to (gateway.param_types), for display. The
    reason may also come from a leading ``/* phigate-reason: ... */`` comment (approvals.statement_reason).
    """
    now = timezone.now()
    reason = with_statement_reason(sql, reason)
    ticket = Ticket.objects.create(
        datasource=datasource,
        agent=principal.agent,
        owner=principal.human,
        sql=sql,
        params=None if params is None else params.to_json(),
        param_types=None if param_types is None else list(param_types),
        sql_sha256=statement_digest(sql, params),
        fingerprint=fingerprint,
        reason=reason,
        risk=risk,
        reasons=list(reasons),
        statement_types=list(statement_types),
        relations=list(relations),
        approvals_required=approvals_required,
        front=context.front or "http",
        session_id=context.session_id,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.TICKET_PENDING_TTL_SECONDS),
    )
    events.ticket_created(
        principal,
        context,
        datasource=datasource.name,
        ticket_id=ticket.pk,
        statement=sql,
        summary=f"held for approval ({approvals_required} needed): " + "; ".join(reasons),
        details={
            "verdict": "held",
            "risk": risk,
            "reasons": list(reasons),
            "statement_types": list(statement_types),
            "relations": list(relations),
            "fingerprint": fingerprint,
            "sql_sha256": ticket.sql_sha256,
            "reason": reason,
            "params": None if params is None else params.for_audit(),
            # The same values with their types and, for binary ones, their exact bytes (the replay shows these).
            "params_shown": None
            if params is None
            else [shown.as_json() for shown in shown_params(params, ticket.param_types)],
        },
    ).record()
    publish_change_on_commit(ticket.pk, Status.PENDING)
    return ticket


def cancel(ticket: Ticket, principal: Principal, context: Context) -> None:
    with transaction.atomic():
        changed = Ticket.objects.filter(pk=ticket.pk, status=Status.PENDING).update(
            status=Status.CANCELLED, decided_at=timezone.now()
        )
        if not changed:
            raise TransitionConflict(f"ticket {ticket.pk} is no longer pending")
        events.ticket_outcome(
            StatementOutcome.CANCELLED,
            principal,
            context,
            datasource=ticket.datasource.name,
            ticket_id=ticket.pk,
            summary="cancelled by the requester",
        ).record()
        publish_change_on_commit(ticket.pk, Status.CANCELLED)


def expire_if_overdue(ticket: Ticket) -> bool:
    """Expire one ticket whose pending window has passed; True if this call expired it."""
    with transaction.atomic():
        changed = Ticket.objects.overdue().filter(pk=ticket.pk).update(status=Status.EXPIRED, decided_at=timezone.now())
        if changed:
            events.ticket_outcome(
                StatementOutcome.REFUSED,
                Principal(human=ticket.owner, agent=ticket.agent),
                Context(front="system"),
                refusal=EventKind.TICKET_EXPIRED,
                datasource=ticket.datasource.name,
                ticket_id=ticket.pk,
                summary="expired without enough approvals",
            ).record()
            publish_change_on_commit(ticket.pk, Status.EXPIRED)
    return bool(changed)


def expire_overdue() -> int:
    """The periodic sweep; lazy expiry on access (expire_if_overdue) covers the gaps between sweeps."""
    expired = 0
    for ticket in Ticket.objects.overdue().select_related("datasource", "owner", "agent"):
        expired += expire_if_overdue(ticket)
    return expired


def unattended_approvals() -> list[int]:
    """APPROVED or EXECUTING tickets that no live executor holds: the execution sweep hands each to an executor.

    The ticket row is the outbox: an approval commits APPROVED in one transaction with its audit event, and only
    an executor's claim moves it on. So an approval whose enqueue never reached Redis (an outage, a crash right
    after the commit) is found here, and so is a ticket whose executor died before or after its claim (its lock
    went with it: approvals.execution_lock). An approval younger than one sweep interval is left to its own
    enqueue, which normally gets there first; an extra delivery would be harmless (the lock and the claim make
    every delivery after the first a no-op), just wasted.
    """
    recent = timezone.now() - timedelta(seconds=settings.EXECUTION_SWEEP_SECONDS)
    waiting = Q(status=Status.EXECUTING) | Q(status=Status.APPROVED, decided_at__lte=recent)
    candidates = list(Ticket.objects.filter(waiting).order_by("pk").values_list("pk", flat=True))
    live = tickets_with_live_executor(candidates)
    return [ticket_id for ticket_id in candidates if ticket_id not in live]
