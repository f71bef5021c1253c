"""The ticket page (web front): what a reviewer sees and approves.

Everything the approval covers is on the page: the statement's exact text and each bind parameter's value, with
its type and, for a binary one, its exact bytes (the SHA-256 shown covers both). Before it runs, the row estimate
and a masked preview of the rows it would touch (approvals.ticket_lookups, computed once); after it ran, what
happened: row count, duration and the masked result, as its requester's agent sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest

from approvals.models import Decision, Review, Status, Ticket
from approvals.params import ShownParam, shown_params
from approvals.rules import review_refusal
from approvals.ticket_lookups import COMPUTING, Lookups, claim, note_rows_shown, skip_reason, stored_lookups
from audit.recorder import Context
from gateway.rpc import GatewayUnavailable
from gateway.ticket_lookups import LookupRefused, lookups_via_gateway
from identity.authentication import web_context
from identity.principal import Principal
from identity.roles import Role, has_role

# Kept across the sign-in a review may require (approvals.views.review), so the typed comment is never lost.
REVIEW_DRAFT = "phigate_review_draft"
# Statuses in which the statement has not run yet: the page shows what it would do.
BEFORE_RUNNING = frozenset({Status.PENDING, Status.APPROVED, Status.EXECUTING})


def lookups_for(ticket: Ticket, principal: Principal, context: Context) -> Lookups:
    """The page's look-ups: the kept ones, or computed now (once) by the gateway, or why there are none."""
    kept = stored_lookups(ticket)
    if kept is not None and kept.state == "done":
        return kept
    skipped = skip_reason(ticket)
    if skipped is not None:
        return Lookups(state="skipped", message=skipped)
    token = claim(ticket)
    if token is None:  # another view is computing them, or has just finished
        ticket.refresh_from_db(fields=["lookups", "status"])
        return stored_lookups(ticket) or Lookups(state="skipped", message=skip_reason(ticket) or "")
    try:
        result = lookups_via_gateway(principal, ticket, token, context)
    except LookupRefused as exc:
        Ticket.objects.filter(pk=ticket.pk, lookups__claim=token).update(lookups=None)
        return Lookups(state="unavailable", message=str(exc))
    except GatewayUnavailable:
        # The gateway may still be working (it keeps its answer under this claim); if it never answers, the claim
        # goes stale and a later view asks again.
        return Lookups(state=COMPUTING, message="the gateway did not answer yet; the estimate will follow")
    return Lookups(state="done", estimate=result.get("estimate"), preview=result.get("preview"))


def page_lookups(ticket: Ticket) -> Lookups:
    """What the page shows without asking anyone: kept look-ups, a claim in progress, a reason there are none, or
    "ask" (the page's script asks for them after it renders, so a slow gateway never delays the page)."""
    kept = stored_lookups(ticket)
    if kept is not None:
        return kept
    skipped = skip_reason(ticket)
    if skipped is not None:
        return Lookups(state="skipped", message=skipped)
    return Lookups(state="ask")


@dataclass(frozen=True)
class Cell:
    value: str | None
    changes: bool = False  # an UPDATE's SET column: ``new`` is the value it would get
    new: str | None = None


@dataclass(frozen=True)
class Column:
    name: str
    changes: bool = False


@dataclass(frozen=True)
class PreviewTable:
    """The preview's rows, each SET column showing its current value and the new one side by side."""

    columns: list[Column]
    rows: list[list[Cell]]
    truncated: bool
    limit: int
    not_shown: list[str]
    masking: dict[str, Any]


def preview_table(preview: dict[str, Any] | None) -> PreviewTable | None:
    if not preview or "columns" not in preview:
        return None
    names: list[str] = list(preview["columns"])
    new = preview.get("new_values") or {"columns": [], "rows": []}
    set_columns: list[str] = list(new["columns"])
    beside = {name: names.index(name) for name in set_columns if name in names}
    extra = [name for name in set_columns if name not in beside]  # not a column of the table's rows: alone
    columns = [Column(name, name in beside) for name in names] + [Column(f"new {name}", True) for name in extra]
    rows: list[list[Cell]] = []
    for current, new_row in zip(preview["rows"], new["rows"] or [[]] * len(preview["rows"]), strict=True):
        new_by_name = dict(zip(set_columns, new_row, strict=False))
        cells = [
            Cell(value, name in beside, new_by_name.get(name)) if name in beside else Cell(value)
            for name, value in zip(names, current, strict=True)
        ]
        cells += [Cell(new_by_name.get(name)) for name in extra]
        rows.append(cells)
    return PreviewTable(
        columns=columns,
        rows=rows,
        truncated=bool(preview.get("truncated")),
        limit=int(preview.get("limit") or 20),
        not_shown=list(preview.get("not_shown") or []),
        masking=dict(preview.get("masking") or {}),
    )


def lookups_context(ticket: Ticket, lookups: Lookups, principal: Principal, request: HttpRequest) -> dict[str, Any]:
    table = preview_table(lookups.preview)
    if table is not None and table.rows:
        note_rows_shown(ticket, principal, web_context(request), what="preview")
    return {
        "ticket": ticket,
        "lookups": lookups,
        "estimate": lookups.estimate or {},
        "preview": lookups.preview,
        "preview_table": table,
        "previews_rows": list(ticket.statement_types)[:1] in (["UPDATE"], ["DELETE"]),
    }


def _shown_result(ticket: Ticket) -> dict[str, Any] | None:
    """The executed statement's stored result, masked for its requester. Shown only when the requester was an
    agent: then it was masked as an agent sees it, the strictest kind, so no viewer of the page sees more than
    their own masks allow."""
    if ticket.status != Status.EXECUTED or ticket.agent_id is None or not ticket.result:
        return None
    result = ticket.result
    if not result.get("columns"):
        return None
    return {
        "columns": result.get("columns", []),
        "rows": result.get("rows", []),
        "truncated": bool(result.get("truncated")),
        "masking": result.get("masking") or {},
    }


def _run_sentence(ticket: Ticket) -> str:
    """Where the statement stands, in words that stay true after it ran ("will run" only before)."""
    return {
        Status.PENDING: "Nothing has run. Once approved, the executor runs exactly these bytes, once.",
        Status.APPROVED: "Approved: the executor will run exactly these bytes, once.",
        Status.EXECUTING: "Running now, once, on the target.",
        Status.EXECUTED: "Ran once: these exact bytes, checked against the approved SHA-256.",
        Status.FAILED: "Failed: PostgreSQL refused or stopped it, and nothing it did was committed.",
        Status.REJECTED: "Rejected: it never ran and never will.",
        Status.EXPIRED: "Expired before enough approvals: it never ran.",
        Status.CANCELLED: "Cancelled by the requester: it never ran.",
    }.get(Status(ticket.status), str(ticket.status))


def live_context(ticket: Ticket, principal: Principal, request: HttpRequest) -> dict[str, Any]:
    """The parts of the page that change: status, approvals, reviews, what ran, the look-ups before it ran."""
    reviews = list(ticket.reviews.select_related("reviewer"))
    duration = None
    if ticket.executed_at and ticket.execution_started_at:
        duration = round((ticket.executed_at - ticket.execution_started_at).total_seconds() * 1000)
    result = _shown_result(ticket)
    if result is not None and result["rows"]:
        note_rows_shown(ticket, principal, web_context(request), what="result")
    context: dict[str, Any] = {
        "ticket": ticket,
        "reviews": reviews,
        "approvals": sum(1 for review in reviews if review.decision == Decision.APPROVE),
        "run_sentence": _run_sentence(ticket),
        "can_replay": has_role(principal.human, Role.COMPLIANCE),
        "duration_ms": duration,
        "result": result,
        "result_hidden": ticket.status == Status.EXECUTED and ticket.agent_id is None and bool(ticket.result),
        "command_tag": (ticket.result or {}).get("command_tag", ""),
        "before_running": ticket.status in BEFORE_RUNNING,
    }
    if context["before_running"]:
        context.update(lookups_context(ticket, page_lookups(ticket), principal, request))
    return context


def my_review(ticket: Ticket, principal: Principal) -> Review | None:
    return next((review for review in ticket.reviews.all() if review.reviewer_id == principal.human.pk), None)


def restore_draft(request: HttpRequest, ticket: Ticket) -> dict[str, str] | None:
    """The comment (and choice) typed before a sign-in interrupted the review, once, for the same person."""
    draft = request.session.get(REVIEW_DRAFT)
    if not isinstance(draft, dict) or draft.get("ticket") != ticket.pk or draft.get("user") != request.user.pk:
        return None
    del request.session[REVIEW_DRAFT]
    return {
        "comment": str(draft.get("comment", "")),
        "decision": str(draft.get("decision", "")),
        "after_sign_in": "yes" if draft.get("after_sign_in") else "",
    }


def keep_draft(
    request: HttpRequest, ticket_id: int, user_id: int, comment: str, decision: str, *, after_sign_in: bool = False
) -> None:
    """Keep what the reviewer typed for the next view of the ticket (after a sign-in, or a refused submission)."""
    request.session[REVIEW_DRAFT] = {
        "ticket": ticket_id,
        "user": user_id,
        "comment": comment,
        "decision": decision,
        "after_sign_in": after_sign_in,
    }


def page_context(ticket: Ticket, principal: Principal, request: HttpRequest) -> dict[str, Any]:
    """The whole page: the statement, its parameters, why it was held, the live part and the review form."""
    refusal = review_refusal(ticket, principal)
    mine = my_review(ticket, principal)
    params: list[ShownParam] = []
    if ticket.statement_params is not None:
        params = shown_params(ticket.statement_params, ticket.param_types)
    return {
        **live_context(ticket, principal, request),
        "params": params,
        "refusal": refusal,
        "my_review": mine,
        "can_review": ticket.status == Status.PENDING and refusal is None and mine is None,
        "draft": restore_draft(request, ticket),
    }
