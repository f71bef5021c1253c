"""A period of activity on a data source of its own, for the activity review's tests (tests/test_activity_review*.py).

Events are written with the recorder's own row builder at chosen moments in a past period (a Tuesday morning,
a Sunday night), so the findings are known in advance whatever day the tests run.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from audit.activity_review import period_containing
from audit.models import AuditEvent, EventKind, Outcome, ReviewPeriod
from audit.recorder import Context, event_row, masking_details
from identity.principal import Principal
from identity.roles import Role
from policy.models import DataSource
from tests.factories import make_agent, make_user

_serial = itertools.count(1)


def event_at(moment: datetime, kind: EventKind, **fields: Any) -> AuditEvent:
    """An event as audit.recorder.record writes it, but at ``moment``."""
    return AuditEvent.objects.create(**{**event_row(kind, **fields), "occurred_at": moment})


@dataclass
class Activity:
    datasource: str
    period: ReviewPeriod
    owner: Any
    agent: Any
    veteran_owner: Any
    veteran: Any
    reviewer: Any
    events: list[AuditEvent]


def activity_period(*, weeks_ago: int = 2, denied_by: Any | None = None) -> Activity:
    """A week of activity on a new data source: an agent new to it (denials, a held statement approved by a
    reviewer, a PHI read far above its zero baseline, a Sunday-night statement, a failed sign-in as it), and a
    veteran agent (history the week before) that touches a table it never touched. ``denied_by``: a person
    with a denial of their own in the period (to test that they may not review it)."""
    name = f"reviewed{next(_serial)}"
    DataSource.objects.create(name=name)
    start, end = period_containing(timezone.now() - timedelta(weeks=weeks_ago))
    period = ReviewPeriod.objects.create(datasource=name, starts_at=start, ends_at=end)
    tuesday, sunday_night = start + timedelta(days=1, hours=10), start + timedelta(days=6, hours=3)
    owner, veteran_owner = make_user(Role.ENGINEER, name="owner"), make_user(Role.ENGINEER, name="veteran")
    reviewer = make_user(Role.REVIEWER, name="approver")
    agent, _ = make_agent(owner)
    veteran, _ = make_agent(veteran_owner)
    as_agent, as_veteran = Principal.for_agent(agent), Principal.for_agent(veteran)
    wire = Context(front="wire", session_id=f"s-{name}")
    events = []

    def add(moment: datetime, kind: EventKind, **fields: Any) -> AuditEvent:
        event = event_at(moment, kind, datasource=name, **fields)
        events.append(event)
        return event

    # The veteran's usual pattern, the week before: it reads appointments.
    add(
        start - timedelta(days=3),
        EventKind.QUERY_SUBMITTED,
        principal=as_veteran,
        context=wire,
        statement="SELECT * FROM appointments",
        details={"verdict": "allowed", "relations": ["public.appointments"]},
    )
    add(
        tuesday,
        EventKind.QUERY_SUBMITTED,
        principal=as_veteran,
        context=wire,
        statement="SELECT * FROM appointments",
        details={"verdict": "allowed", "relations": ["appointments"]},
    )
    add(
        tuesday + timedelta(minutes=5),
        EventKind.QUERY_SUBMITTED,
        principal=as_veteran,
        context=wire,
        statement="SELECT * FROM billing",
        details={"verdict": "allowed", "relations": ["public.billing"]},
    )
    # The new agent.
    for minute in (1, 2):
        add(
            tuesday + timedelta(minutes=minute),
            EventKind.QUERY_DENIED,
            principal=as_agent,
            context=wire,
            outcome=Outcome.DENIED,
            statement="COPY patients TO PROGRAM 'curl'",
            summary="denied by policy: COPY PROGRAM",
        )
    submitted = add(
        tuesday + timedelta(minutes=10),
        EventKind.QUERY_SUBMITTED,
        principal=as_agent,
        context=wire,
        statement="SELECT ssn FROM patients",
        details={"verdict": "allowed", "relations": ["patients"]},
    )
    add(
        tuesday + timedelta(minutes=10, seconds=1),
        EventKind.QUERY_EXECUTED,
        principal=as_agent,
        context=wire,
        details={
            "submitted_event": submitted.pk,
            "rowcount": 500,
            **masking_details({"ssn": {"mask": "partial", "phi_type": "ssn"}}),
        },
    )
    ticket_id = 8_000_000 + submitted.pk
    add(
        tuesday + timedelta(minutes=20),
        EventKind.TICKET_CREATED,
        principal=as_agent,
        context=wire,
        outcome=Outcome.HELD,
        ticket_id=ticket_id,
        statement="DELETE FROM scratch WHERE id = 3",
        summary="held for approval (1 needed): writes data",
        details={"verdict": "held", "reasons": ["writes data"], "relations": ["scratch"]},
    )
    add(
        tuesday + timedelta(minutes=30),
        EventKind.TICKET_REVIEWED,
        principal=Principal(human=reviewer),
        ticket_id=ticket_id,
        details={"decision": "approve", "comment": "ok"},
    )
    add(
        tuesday + timedelta(minutes=30),
        EventKind.TICKET_APPROVED,
        principal=Principal(human=reviewer),
        ticket_id=ticket_id,
        summary="approved (1 of 1)",
    )
    add(
        sunday_night,
        EventKind.QUERY_SUBMITTED,
        principal=as_agent,
        context=wire,
        statement="SELECT 1",
        details={"verdict": "allowed", "relations": []},
    )
    add(
        tuesday + timedelta(hours=1),
        EventKind.AUTH_FAILED,
        principal=None,
        outcome=Outcome.FAILURE,
        context=Context(front="wire", source_address="192.0.2.7"),
        attempted_name=agent.name,
        summary="wire sign-in failed: bad password",
        details={"reason": "bad password", "agent": agent.name},
    )
    if denied_by is not None:
        add(
            tuesday + timedelta(hours=2),
            EventKind.QUERY_DENIED,
            principal=Principal(human=denied_by),
            outcome=Outcome.DENIED,
            statement="DROP TABLE patients",
            summary="denied by policy: DDL",
        )
    return Activity(name, period, owner, agent, veteran_owner, veteran, reviewer, events)
