"""The one way to write an audit event.

Callers run it inside the ``transaction.atomic()`` block of the state change it describes, so the change and
its record commit together or not at all; for reads, the record commits *before* the statement runs, so if
the audit write fails the statement never runs (non-negotiable 6).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from audit.models import AuditEvent, EventKind, Outcome
from identity.principal import Principal


@dataclass(frozen=True)
class Context:
    """Where a request came from; carried from the front (HTTP, wire, MCP) down to every event it causes."""

    front: str = ""
    source_address: str | None = None
    session_id: str = ""


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
    """The column values of one event: the single definition both writers (ORM and batch) use."""
    ctx = context or Context()
    return {
        "occurred_at": timezone.now(),
        "kind": str(kind),
        "outcome": str(outcome),
        "actor_id": principal.human.pk if principal else None,
        "actor_name": principal.human.get_username() if principal else "",
        "agent_id": principal.agent.pk if principal and principal.agent else None,
        "agent_name": (principal.agent.name if principal and principal.agent else attempted_name)[:63],
        "datasource": datasource,
        "ticket_id": ticket_id,
        "front": ctx.front,
        "source_address": ctx.source_address or None,
        "session_id": ctx.session_id,
        "statement": statement,
        "summary": summary,
        "details": dict(details or {}),
    }


def masking_details(masking: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """How a result was masked, for an event's details: per column, and the PHI types as a flat list that the
    search's GIN index can match by containment."""
    return {
        "masking": {column: dict(spec) for column, spec in masking.items()},
        "phi_types": sorted({str(spec.get("phi_type", "")) for spec in masking.values()} - {""}),
    }


def record(kind: EventKind, **fields: Any) -> AuditEvent:
    """Insert one event now (ORM), in the caller's transaction. Takes ``event_row``'s arguments;
    ``attempted_name`` names who a failed authentication claimed to be."""
    return AuditEvent.objects.create(**event_row(kind, **fields))
