"""Sync business calls the wire session makes (in worker threads): sign-in, decisions, audits, ticket state.

Kept apart from the asyncio session so the session holds protocol logic only, and so each call opens and closes
its database work in one place (``close_old_connections`` keeps long-lived threads from holding dead ones).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections, transaction
from django.utils import timezone

from approvals.lifecycle import TransitionConflict, cancel, expire_if_overdue
from approvals.models import FINAL_STATUSES, Decision, Status, Ticket
from audit.models import EventKind, Outcome
from audit.recorder import Context, record
from identity.models import Agent
from identity.principal import Principal
from identity.scram import Verifier, parse_verifier
from policy.credentials import Access, configured_datasources


@dataclass(frozen=True)
class Login:
    principal: Principal | None
    verifier: Verifier | None
    refusal: str = ""


def look_up_login(agent_name: str, datasource: str) -> Login:
    """The agent's verifier, or why it cannot sign in. The reason is audited, never told to the client."""
    close_old_connections()
    agent = Agent.objects.active().select_related("owner").filter(name=agent_name).first()
    if agent is None:
        return Login(None, None, "unknown, revoked or expired agent (or inactive owner)")
    if datasource not in configured_datasources(Access.READ):
        return Login(Principal.for_agent(agent), None, f"data source {datasource!r} is not served by this gateway")
    try:
        verifier = parse_verifier(agent.scram_verifier)
    except ValueError:
        return Login(Principal.for_agent(agent), None, "agent has no wire credential; rotate its token")
    return Login(Principal.for_agent(agent), verifier)


def record_sign_in(login: Login, attempted_name: str, datasource: str, context: Context, failure: str = "") -> None:
    close_old_connections()
    with transaction.atomic():
        if failure:
            record(
                EventKind.AUTH_FAILED,
                principal=None,
                context=context,
                outcome=Outcome.FAILURE,
                datasource=datasource[:63],
                attempted_name=attempted_name,
                summary=f"wire sign-in as {attempted_name!r} failed: {failure}",
                details={"reason": failure, "agent": attempted_name[:63]},
            )
        else:
            record(
                EventKind.AUTH_SUCCEEDED,
                principal=login.principal,
                context=context,
                datasource=datasource,
                summary=f"wire session opened by {login.principal.describe() if login.principal else attempted_name}",
            )


def record_session_refused(login: Login, attempted_name: str, datasource: str, context: Context, reason: str) -> None:
    """A signed-in agent's session refused before it opened (a setting, the session cap): audited with the agent,
    since its credential was good."""
    close_old_connections()
    with transaction.atomic():
        record(
            EventKind.AUTH_FAILED,
            principal=login.principal,
            context=context,
            outcome=Outcome.DENIED,
            datasource=datasource[:63],
            attempted_name=attempted_name,
            summary=f"wire session refused for {attempted_name!r}: {reason}",
            details={"reason": reason, "agent": attempted_name[:63]},
        )


def ended_agents(agent_ids: list[int]) -> dict[int, str]:
    """Of these agents, the ones that may no longer sign in, with why (one query by primary key)."""
    close_old_connections()
    now = timezone.now()
    rows = Agent.objects.filter(pk__in=agent_ids).values_list("pk", "revoked_at", "expires_at", "owner__is_active")
    ended = {pk: "was deleted" for pk in agent_ids}
    for pk, revoked_at, expires_at, owner_active in rows:
        if revoked_at is not None:
            ended[pk] = "was revoked"
        elif expires_at is not None and expires_at <= now:
            ended[pk] = "expired"
        elif not owner_active:
            ended[pk] = "acts for an owner who was deactivated"
        else:
            del ended[pk]
    return ended


def record_session_ended(principal: Principal | None, datasource: str, context: Context, reason: str) -> None:
    """The gateway ended an open wire session because its agent may no longer act (revoked, expired...)."""
    close_old_connections()
    with transaction.atomic():
        record(
            EventKind.AUTH_FAILED,
            principal=principal,
            context=context,
            outcome=Outcome.FAILURE,
            datasource=datasource[:63],
            summary=f"wire session ended: agent {reason}",
            details={"reason": f"agent {reason}", "session_ended": True},
        )


@dataclass(frozen=True)
class TicketState:
    status: str
    approvals: int
    approvals_required: int
    url: str
    rowcount: int | None
    result: dict[str, Any] | None
    error: str
    last_comment: str
    last_reviewer: str

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


def ticket_state(ticket_id: int) -> TicketState:
    close_old_connections()
    ticket = Ticket.objects.select_related("datasource", "owner", "agent").get(pk=ticket_id)
    if expire_if_overdue(ticket):
        ticket.refresh_from_db()
    reviews = list(ticket.reviews.select_related("reviewer").order_by("created_at", "id"))
    last = reviews[-1] if reviews else None
    return TicketState(
        status=ticket.status,
        approvals=sum(1 for review in reviews if review.decision == Decision.APPROVE),
        approvals_required=ticket.approvals_required,
        url=ticket.url,
        rowcount=ticket.rowcount,
        result=ticket.result,
        error=ticket.error,
        last_comment=last.comment if last else "",
        last_reviewer=last.reviewer.get_username() if last else "",
    )


def cancel_waiting_ticket(ticket_id: int, principal: Principal, context: Context) -> None:
    close_old_connections()
    ticket = Ticket.objects.select_related("datasource").get(pk=ticket_id)
    if ticket.status == Status.PENDING:
        with contextlib.suppress(TransitionConflict):  # decided meanwhile; the wait loop reports the outcome
            cancel(ticket, principal, context)
