"""The one way to write an audit event from a request or a task (ORM, in the caller's transaction).

Callers run it inside the ``transaction.atomic()`` block of the state change it describes, so the change and
its record commit together or not at all; for reads, the record commits *before* the statement runs, so if
the audit write fails the statement never runs (non-negotiable 6).

The events themselves, their columns and the statement vocabulary (statement ids, outcomes) are defined in
audit.events; ``record`` and ``event_row`` are the generic forms for events that are not a statement's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.events import Context, Event, masking_details
from audit.models import AuditEvent, EventKind, Outcome
from identity.principal import Principal

__all__ = ["Context", "event_row", "masking_details", "record"]


def event_row(
    kind: EventKind,
    *,
    principal: Principal | None,
    context: Context | None = None,
    outcome: Outcome = Outcome.SUCCESS,
    datasource: str = "",
    ticket_id: int | None = None,
    statement: str = "",
    summary: str = "",
    details: Mapping[str, Any] | None = None,
    attempted_name: str = "",
) -> dict[str, Any]:
    """The column values of one event (``audit.events.Event.row``)."""
    return Event(
        kind,
        principal,
        context or Context(),
        outcome=outcome,
        datasource=datasource,
        ticket_id=ticket_id,
        statement=statement,
        summary=summary,
        details=details or {},
        attempted_name=attempted_name,
    ).row()


def record(kind: EventKind, **fields: Any) -> AuditEvent:
    """Insert one event now (ORM), in the caller's transaction. Takes ``event_row``'s arguments;
    ``attempted_name`` names who a failed authentication claimed to be."""
    return AuditEvent.objects.create(**event_row(kind, **fields))
