"""Who may review a ticket. One function, used by the API, the web UI and (later) Slack, so the rule cannot drift."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from approvals.models import Decision, Ticket
from identity.principal import Principal
from identity.roles import Role, has_role
from policy.classifier import Classification
from policy.models import ApproverMode, ApproverRule, DataSource, RiskScope

_WRITES = frozenset({"UPDATE", "DELETE"})


def required_approvals(classification: Classification, datasource: DataSource) -> int:
    """The data source's thresholds: the classifier says whether a statement is ordinary or needs the stricter
    rule (DDL, or UPDATE/DELETE of every row); the policy says how many reviewers each of those takes. An
    approver rule for the risk can only raise the count ("all of dba and security" needs two people)."""
    if classification.approvals_required <= 1:
        threshold = datasource.approvals_default
    elif set(classification.statement_types) <= _WRITES:  # the stricter rule here is "every row"
        threshold = max(datasource.approvals_default, datasource.approvals_bulk_write)
    else:
        threshold = max(datasource.approvals_default, datasource.approvals_ddl)  # DDL, TRUNCATE, DO, CALL
    rule = approver_rule(datasource, str(classification.risk))
    return max(threshold, rule.approvals_needed()) if rule is not None else threshold


def approver_rule(datasource: DataSource, risk: str) -> ApproverRule | None:
    """The rule for this risk, else (for a critical ticket) the rule for high risk, else the data source's rule for
    any risk, else none.

    Critical is what high used to mean for destructive statements (DROP TABLE, TRUNCATE, writes to every row), so
    a policy's rule for high keeps covering them until it names one for critical: a sharper ranking never
    loosens who must approve.
    """
    rules = {rule.risk: rule for rule in datasource.approver_rules.prefetch_related("groups")}
    if risk == RiskScope.CRITICAL and RiskScope.CRITICAL not in rules:
        risk = RiskScope.HIGH
    return rules.get(risk) or rules.get(RiskScope.ANY)


def _group_names(rule: ApproverRule) -> set[str]:
    return {group.name for group in rule.groups.all()}


def _member_groups(principal: Principal) -> set[str]:
    return set(principal.human.groups.values_list("name", flat=True))


def approval_complete(ticket: Ticket) -> bool:
    """Enough approvals, from the right people: the count, and the approver rule's groups if there is one."""
    approvers = [
        review.reviewer for review in ticket.reviews.filter(decision=Decision.APPROVE).select_related("reviewer")
    ]
    if len(approvers) < ticket.approvals_required:
        return False
    rule = approver_rule(ticket.datasource, ticket.risk)
    if rule is None:
        return True
    wanted = _group_names(rule)
    memberships = [set(user.groups.values_list("name", flat=True)) & wanted for user in approvers]
    if rule.mode == ApproverMode.ALL_OF:
        return _distinct_cover(memberships, sorted(wanted))
    eligible = sum(1 for groups in memberships if groups)
    return eligible >= (rule.count if rule.mode == ApproverMode.N_OF else 1)


def _distinct_cover(memberships: list[set[str]], groups: list[str]) -> bool:
    """Whether each group can be given a different approver who belongs to it (rules name a few groups)."""
    if len(memberships) < len(groups):
        return False
    people: Iterable[tuple[int, ...]] = itertools.permutations(range(len(memberships)), len(groups))
    return any(
        all(group in memberships[person] for person, group in zip(chosen, groups, strict=True)) for chosen in people
    )


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
    rule = approver_rule(ticket.datasource, ticket.risk)
    if rule is not None and not (_group_names(rule) & _member_groups(principal)):
        names = " or ".join(sorted(_group_names(rule))) or "(no group configured)"
        return f"this data source needs approvers from {names} for {ticket.risk}-risk statements"
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


@dataclass(frozen=True)
class StillNeeded:
    """What a pending ticket still lacks, in the terms ``approval_complete`` decides by (the queue shows it)."""

    approvals: int  # more approvals before the ticket is approved (0: none)
    from_groups: int = 0  # how many of those must come from ``groups``
    groups: tuple[str, ...] = ()  # members of any of these may give them (one of each, for "all of" rules)
    one_from_each: bool = False

    def __str__(self) -> str:
        more = f"needs {self.approvals} more"
        if self.approvals <= 0:
            return "no more approvals needed"
        if not self.groups or self.from_groups <= 0:
            return f"{more} approval{'s' if self.approvals != 1 else ''}"
        joined = (" and " if self.one_from_each else " or ").join(self.groups)
        if self.one_from_each and len(self.groups) > 1:
            who = f"one from each of {joined}"
            return f"{more}: {who}" if self.from_groups == self.approvals else f"{more}, {who}"
        if self.from_groups == self.approvals:
            return f"{more} from {joined}"
        return f"{more}, {self.from_groups} of them from {joined}"


def still_needed(ticket: Ticket) -> StillNeeded:
    """How many more approvals, and from whom, before ``approval_complete(ticket)`` holds.

    Reads ``ticket.reviews.all()`` and each approver's ``groups.all()``, so a queue can prefetch them
    (``reviews__reviewer__groups``) for many tickets at once.
    """
    approvers = [review.reviewer for review in ticket.reviews.all() if review.decision == Decision.APPROVE]
    missing = max(0, ticket.approvals_required - len(approvers))
    rule = approver_rule(ticket.datasource, ticket.risk)
    if rule is None:
        return StillNeeded(approvals=missing)
    wanted = _group_names(rule)
    memberships = [{group.name for group in user.groups.all()} & wanted for user in approvers]
    if rule.mode == ApproverMode.ALL_OF:
        uncovered = _uncovered_groups(memberships, sorted(wanted))
        return StillNeeded(max(missing, len(uncovered)), len(uncovered), tuple(uncovered), one_from_each=True)
    eligible = sum(1 for groups in memberships if groups)
    from_groups = max(0, (rule.count if rule.mode == ApproverMode.N_OF else 1) - eligible)
    return StillNeeded(max(missing, from_groups), from_groups, tuple(sorted(wanted)))


def _uncovered_groups(memberships: list[set[str]], groups: list[str]) -> list[str]:
    """The groups left without an approver of their own in the best assignment of distinct approvers."""
    for size in range(len(groups), 0, -1):
        for covered in itertools.combinations(groups, size):
            if _distinct_cover(memberships, list(covered)):
                return [group for group in groups if group not in covered]
    return groups
