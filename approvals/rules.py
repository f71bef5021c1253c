"""Who may review a ticket. One function, used by the API, the web UI and (later) Slack, so the rule cannot drift."""

from __future__ import annotations

from approvals.models import Ticket
from identity.principal import Principal
from identity.roles import Role, has_role
from policy.classifier import Classification
from policy.models import DataSource

_WRITES = frozenset({"UPDATE", "DELETE"})


def required_approvals(classification: Classification, datasource: DataSource) -> int:
    """The data source's thresholds: the classifier says whether a statement is ordinary or needs the stricter
    rule (DDL, or UPDATE/DELETE without WHERE); the policy says how many reviewers each of those takes."""
    if classification.approvals_required <= 1:
        return datasource.approvals_default
    if set(classification.statement_types) <= _WRITES:  # the stricter rule here is "no WHERE clause"
        return max(datasource.approvals_default, datasource.approvals_bulk_write)
    return max(datasource.approvals_default, datasource.approvals_ddl)  # DDL, TRUNCATE, DO, CALL


def review_refusal(ticket: Ticket, principal: Principal) -> str | None:
    """Why ``principal`` may not review ``ticket``, or None when they may.

    Reviewers are humans with the reviewer role who are neither the requester nor the requester's owner:
    an agent's token never approves anything, even when its owner is a reviewer.
    """
    if principal.is_agent:
        return "agents cannot review tickets"
    if not has_role(principal.human, Role.REVIEWER):
        return "only users with the reviewer role can review tickets"
    if principal.human.pk == ticket.owner_id:
        return "you requested this statement (directly or through your agent) and cannot review it"
    return None


def can_view(ticket: Ticket, principal: Principal) -> bool:
    """Requester (the owner, or the agent that asked), reviewers and compliance officers may see a ticket."""
    if principal.is_agent:
        return principal.agent is not None and principal.agent.pk == ticket.agent_id
    if principal.human.pk == ticket.owner_id:
        return True
    return has_role(principal.human, Role.REVIEWER) or has_role(principal.human, Role.COMPLIANCE)


def is_requester(ticket: Ticket, principal: Principal) -> bool:
    """The agent that asked, or the accountable owner acting as themself (an owner may cancel for their agent).

    Another agent of the same owner is not the requester: agents only see their own tickets.
    """
    if principal.agent is not None:
        return principal.agent.pk == ticket.agent_id
    return principal.human.pk == ticket.owner_id
