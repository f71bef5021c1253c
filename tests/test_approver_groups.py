"""Approver groups per data source and risk: "N of group X", "any of X or Y", "all of X and Y"."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group

from approvals.models import Status, Ticket
from identity.roles import Role
from policy.models import ApproverMode, ApproverRule, DataSource, RiskScope
from tests import environment
from tests.factories import agent_client, make_group, make_user, user_client

pytestmark = pytest.mark.usefixtures("services")


@pytest.fixture
def groups() -> dict[str, Group]:
    return {name: make_group(name) for name in ("dba", "security")}


@pytest.fixture
def make_rule(groups: dict[str, Group]) -> Iterator[Any]:
    datasource = DataSource.objects.get(name=environment.DATASOURCE)
    made: list[ApproverRule] = []

    def make(mode: ApproverMode, members: list[str], count: int = 1, risk: RiskScope = RiskScope.ANY) -> ApproverRule:
        rule = ApproverRule.objects.create(datasource=datasource, risk=risk, mode=mode, count=count)
        rule.groups.set([groups[name] for name in members])
        made.append(rule)
        return rule

    yield make
    ApproverRule.objects.filter(pk__in=[rule.pk for rule in made]).delete()  # the data source is shared


def reviewer_in(*group_objects: Group) -> Any:
    user = make_user(Role.REVIEWER)
    user.groups.add(*group_objects)
    return user


def held_ticket() -> Ticket:
    owner = make_user(Role.ENGINEER)
    _, agent_api = agent_client(owner)
    response = agent_api.post(
        "/api/v1/queries", {"datasource": "clinic", "sql": "DELETE FROM scratch WHERE id = 0"}, format="json"
    )
    assert response.status_code == 202, response.content
    return Ticket.objects.get(pk=response.json()["ticket"]["id"])


def review(user: Any, ticket: Ticket, decision: str = "approve") -> int:
    response = user_client(user).post(
        f"/api/v1/tickets/{ticket.pk}/reviews", {"decision": decision, "comment": "checked"}, format="json"
    )
    return response.status_code


def status(ticket: Ticket) -> str:
    return Ticket.objects.get(pk=ticket.pk).status


def test_two_of_a_group(make_rule, groups) -> None:  # type: ignore[no-untyped-def]
    make_rule(ApproverMode.N_OF, ["dba"], count=2)
    ticket = held_ticket()
    assert ticket.approvals_required == 2
    assert review(make_user(Role.REVIEWER), ticket) == 403  # a reviewer, but not a dba
    assert review(reviewer_in(groups["security"]), ticket) == 403
    assert review(reviewer_in(groups["dba"]), ticket) == 201
    assert status(ticket) == Status.PENDING  # 1 of 2
    assert review(reviewer_in(groups["dba"]), ticket) == 201
    assert status(ticket) in (Status.APPROVED, Status.EXECUTING, Status.EXECUTED)


def test_any_of_two_groups(make_rule, groups) -> None:  # type: ignore[no-untyped-def]
    make_rule(ApproverMode.ANY_OF, ["dba", "security"])
    ticket = held_ticket()
    assert ticket.approvals_required == 1
    assert review(make_user(Role.REVIEWER), ticket) == 403
    assert review(reviewer_in(groups["security"]), ticket) == 201
    assert status(ticket) in (Status.APPROVED, Status.EXECUTING, Status.EXECUTED)


def test_all_of_two_groups_needs_a_different_person_from_each(make_rule, groups) -> None:  # type: ignore[no-untyped-def]
    make_rule(ApproverMode.ALL_OF, ["dba", "security"])
    ticket = held_ticket()
    assert ticket.approvals_required == 2
    assert review(reviewer_in(groups["dba"]), ticket) == 201
    assert review(reviewer_in(groups["dba"]), ticket) == 201
    assert status(ticket) == Status.PENDING  # two approvals, but nobody from security yet
    assert review(reviewer_in(groups["security"]), ticket) == 201
    assert status(ticket) in (Status.APPROVED, Status.EXECUTING, Status.EXECUTED)

    both = held_ticket()
    assert review(reviewer_in(groups["dba"], groups["security"]), both) == 201
    assert status(both) == Status.PENDING  # one person cannot stand for both groups
    assert review(reviewer_in(groups["dba"]), both) == 201
    assert status(both) in (Status.APPROVED, Status.EXECUTING, Status.EXECUTED)


def test_a_rule_for_the_risk_wins_over_the_any_rule(make_rule, groups) -> None:  # type: ignore[no-untyped-def]
    make_rule(ApproverMode.ANY_OF, ["security"])
    ticket = held_ticket()
    make_rule(ApproverMode.ANY_OF, ["dba"], risk=RiskScope(ticket.risk))
    assert review(reviewer_in(groups["security"]), ticket) == 403
    assert review(reviewer_in(groups["dba"]), ticket) == 201


def test_the_owner_stays_refused_even_in_the_group(make_rule, groups) -> None:  # type: ignore[no-untyped-def]
    make_rule(ApproverMode.ANY_OF, ["dba"])
    ticket = held_ticket()
    ticket.owner.groups.add(groups["dba"])
    from identity.roles import grant_role

    grant_role(ticket.owner, Role.REVIEWER)
    assert review(ticket.owner, ticket) == 403
    assert review(make_user(Role.COMPLIANCE), ticket) == 403
    assert status(ticket) == Status.PENDING


def test_approver_groups_follow_the_identity_providers_claim(make_rule, groups) -> None:  # type: ignore[no-untyped-def]
    from identity.oidc import RoleMappingOIDCBackend

    make_rule(ApproverMode.ANY_OF, ["dba"])
    unrelated = make_group("lunch-club")
    user = make_user()
    user.groups.add(unrelated)
    backend = RoleMappingOIDCBackend.__new__(RoleMappingOIDCBackend)  # the claim mapping needs no provider
    backend._sync_roles(user, {"groups": ["reviewer", groups["dba"].name, "not-a-group-we-know"]})
    assert set(user.groups.values_list("name", flat=True)) == {"reviewer", groups["dba"].name, unrelated.name}
    backend._sync_roles(user, {"groups": ["reviewer"]})  # removed at the provider: removed here
    assert set(user.groups.values_list("name", flat=True)) == {"reviewer", unrelated.name}
