"""Session replay: a session's audit events folded into steps (a statement with its decision and its result),
with the reviews of its tickets merged in, in time order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from audit.events import statement_key
from audit.filters import kind_label
from audit.models import AuditEvent, EventKind

# The outcomes that follow a statement's submitted record in its session (a refusal is a step of its own, and a
# ticket's outcome is recorded in the executor's or reviewer's context).
RESULT_KINDS = frozenset({EventKind.QUERY_EXECUTED, EventKind.QUERY_FAILED})


@dataclass
class Step:
    at: datetime
    kind: str
    actor: str
    outcome: str
    summary: str
    statement: str = ""
    verdict: str = ""
    reasons: list[str] = field(default_factory=list)
    ticket_id: int | None = None
    rows: int | None = None
    duration_ms: float | None = None
    masking: dict[str, Any] = field(default_factory=dict)
    preview: dict[str, Any] = field(default_factory=dict)
    result_sha256: str = ""
    params: list[dict[str, Any]] = field(default_factory=list)  # bind parameters the statement was sent with
    other_session: bool = False
    event_ids: list[int] = field(default_factory=list)  # the first is the statement's event (reveal literals)
    offset_ms: int = 0

    @property
    def kind_label(self) -> str:
        return kind_label(self.kind)


def _who(event: AuditEvent) -> str:
    return event.actor_name + (f" via {event.agent_name}" if event.agent_name else "")


def statement_params(details: dict[str, Any]) -> list[dict[str, Any]]:
    """A statement's bind parameters: typed (``params_shown``, ticket events) or as text (``params``, reads)."""
    shown = details.get("params_shown")
    if isinstance(shown, list):
        return [dict(param) for param in shown if isinstance(param, dict)]
    values = details.get("params")
    if not isinstance(values, list):
        return []
    return [{"position": index + 1, "value": value, "null": value is None} for index, value in enumerate(values)]


def _step(event: AuditEvent, other_session: bool = False) -> Step:
    details = event.details or {}
    return Step(
        at=event.occurred_at,
        kind=event.kind,
        actor=_who(event),
        outcome=event.outcome,
        summary=event.summary,
        statement=event.statement_masked,  # literals masked; revealed only by the audited reveal action
        verdict=str(details.get("verdict", "")),
        reasons=[str(reason) for reason in details.get("reasons", [])],
        ticket_id=event.ticket_id,
        params=statement_params(details),
        other_session=other_session,
        event_ids=[event.pk],
    )


def _attach_result(step: Step, event: AuditEvent) -> None:
    details = event.details or {}
    step.rows = details.get("rowcount")
    step.duration_ms = details.get("duration_ms")
    step.masking = details.get("masking") or {}
    step.preview = details.get("preview") or {}
    step.result_sha256 = str(details.get("result_sha256", ""))
    if event.pk not in step.event_ids:  # a result without its statement is a step of its own
        step.event_ids.append(event.pk)
    if event.kind == EventKind.QUERY_FAILED:
        step.outcome = event.outcome
        step.summary = f"{step.summary}; {event.summary}"


def replay_steps(events: Sequence[AuditEvent], approvals: Sequence[AuditEvent] = ()) -> list[Step]:
    """One step per statement: its record, with its outcome attached by the one linking key (audit.events)."""
    steps: list[Step] = []
    by_statement: dict[str, Step] = {}
    for event in events:
        details = event.details or {}
        key = statement_key(event.pk, event.kind, details)
        if event.kind in RESULT_KINDS:
            owner = by_statement.get(key) if key else None
            if owner is not None:
                _attach_result(owner, event)
                continue
        step = _step(event)
        if event.kind in RESULT_KINDS:
            _attach_result(step, event)
        steps.append(step)
        if event.kind == EventKind.QUERY_SUBMITTED and key:
            by_statement[key] = step
    steps.extend(_step(event, other_session=True) for event in approvals)
    steps.sort(key=lambda step: (step.at, step.event_ids[0]))
    if steps:
        start = steps[0].at
        for step in steps:
            step.offset_ms = int((step.at - start).total_seconds() * 1000)
    return steps
