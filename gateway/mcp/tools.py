"""What each MCP tool does, as plain synchronous functions of the caller; ``server.py`` is the async edge.

These run in the web process (streamable HTTP) or the ``manage.py mcp`` process (stdio), neither of which holds
a target credential: statements, EXPLAIN and the table listing go to the gateway over the signed Redis queue,
the same path as ``POST /api/v1/queries``, so the policy pipeline and its audit are the same. Ticket access
reuses the ticket API's functions (``approvals.api``), so an agent sees only its own tickets on every front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from rest_framework.exceptions import APIException

from approvals.api import read_result, visible_ticket, wait_for_visible_ticket
from approvals.models import Status, Ticket
from approvals.notify import redis_client
from approvals.rules import is_requester
from approvals.serializers import TicketSerializer
from audit.models import EventKind
from audit.recorder import Context, record
from gateway.explain import ExplainRefused, explain_via_gateway
from gateway.rpc import GatewayUnavailable, OperationRefused, call_gateway, call_operation
from identity.principal import Principal

# The contract's name for "held for a reviewer" on MCP (the HTTP API answers 202 "pending").
PENDING_APPROVAL = "pending_approval"


@dataclass(frozen=True)
class Caller:
    """Who is calling (always an agent on MCP) and the audit context of the call (front "mcp")."""

    principal: Principal
    context: Context


class ToolRefused(Exception):
    """A tool call that cannot be answered; the message is safe to show to the agent."""


def _gateway_timeout() -> float:
    return settings.READ_STATEMENT_TIMEOUT_MS / 1000 + 10


def audit_call(caller: Caller, tool: str, *, datasource: str = "", ticket_id: int | None = None) -> None:
    """One event per tool call, like the HTTP API's one per request: who called which tool, from where.

    What the call then does (statement, denial, ticket, result read) is recorded by the code that does it.
    """
    with transaction.atomic():
        record(
            EventKind.AUTH_SUCCEEDED,
            principal=caller.principal,
            context=caller.context,
            datasource=datasource[:63],
            ticket_id=ticket_id,
            summary=f"MCP tool {tool} as {caller.principal.describe()}",
            details={"tool": tool},
        )


def query(caller: Caller, datasource: str, sql: str, reason: str = "") -> dict[str, Any]:
    try:
        outcome = call_gateway(
            redis_client(),
            principal=caller.principal,
            datasource=datasource,
            sql=sql,
            reason=reason,
            context=caller.context,
            timeout_seconds=_gateway_timeout(),
        )
    except GatewayUnavailable as exc:
        raise ToolRefused(str(exc)) from exc
    if outcome.status == "executed":
        return {
            "status": "executed",
            "columns": outcome.columns,
            "column_types": outcome.column_types,
            "rows": outcome.rows,
            "rowcount": outcome.rowcount,
            "truncated": outcome.truncated,
            "masking": outcome.masking,
        }
    if outcome.status == "pending":
        return {
            "status": PENDING_APPROVAL,
            "ticket": {"id": outcome.ticket_id, "url": outcome.ticket_url},
            "reasons": outcome.reasons,
            "next": f"a reviewer must approve it; call wait_for_ticket with ticket_id={outcome.ticket_id}",
        }
    if outcome.status == "denied":
        return {"status": "denied", "reasons": outcome.reasons}
    return {"status": outcome.status, "error": outcome.error}


def _ticket(principal: Principal, ticket_id: int) -> Ticket:
    try:
        return visible_ticket(principal, ticket_id)
    except APIException as exc:
        raise ToolRefused(str(exc.detail)) from exc


def _describe(caller: Caller, ticket: Ticket) -> dict[str, Any]:
    """The ticket as ``GET /api/v1/tickets/{id}`` shows it, plus the masked result once executed."""
    payload: dict[str, Any] = dict(TicketSerializer(ticket).data)
    if ticket.status == Status.EXECUTED and is_requester(ticket, caller.principal):
        payload["result"] = read_result(caller.principal, ticket, caller.context)
    return payload


def ticket_status(caller: Caller, ticket_id: int) -> dict[str, Any]:
    return _describe(caller, _ticket(caller.principal, ticket_id))


def wait_for_ticket(caller: Caller, ticket_id: int, timeout_seconds: float) -> dict[str, Any]:
    """Long poll, capped at ``WAIT_TIMEOUT_MAX_SECONDS`` like ``/wait``."""
    ticket = wait_for_visible_ticket(caller.principal, _ticket(caller.principal, ticket_id), timeout_seconds)
    return _describe(caller, ticket)


def list_tables(caller: Caller, datasource: str) -> dict[str, Any]:
    try:
        return call_operation(
            redis_client(),
            "list_tables",
            principal=caller.principal,
            datasource=datasource,
            context=caller.context,
            timeout_seconds=_gateway_timeout(),
        )
    except (OperationRefused, GatewayUnavailable) as exc:
        raise ToolRefused(str(exc)) from exc


def explain(caller: Caller, datasource: str, sql: str) -> dict[str, Any]:
    try:
        return explain_via_gateway(caller.principal, datasource, sql, context=caller.context)
    except (ExplainRefused, GatewayUnavailable) as exc:
        raise ToolRefused(str(exc)) from exc
