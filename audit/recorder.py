"""The one way to write an audit event.

Callers run it inside the ``transaction.atomic()`` block of the state change it describes, so the change and
its record commit together or not at all; for reads, the record commits *before* the statement runs, so if
the audit write fails the statement never runs (non-negotiable 6).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from audit.models import AuditEvent, EventKind, Outcome
from identity.principal import Principal


@dataclass(frozen=True)
class Context:
    """Where a request came from; carried from the front (HTTP, wire, MCP) down to every event it causes."""

    front: str = ""
    source_address: str | None = None
    session_id: str = ""


def record(
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
) -> AuditEvent:
    """Insert one event. ``attempted_name`` names who a failed authentication claimed to be."""
    ctx = context or Context()
    return AuditEvent.objects.create(
        kind=kind,
        outcome=outcome,
        actor=principal.human if principal else None,
        actor_name=principal.human.get_username() if principal else "",
        agent=principal.agent if principal else None,
        agent_name=(principal.agent.name if principal and principal.agent else attempted_name)[:63],
        datasource=datasource,
        ticket_id=ticket_id,
        front=ctx.front,
        source_address=ctx.source_address or None,
        session_id=ctx.session_id,
        statement=statement,
        summary=summary,
        details=dict(details or {}),
    )
