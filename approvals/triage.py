"""What a reviewer needs to triage the queue: a one-line preview of each statement, who must still approve it,
which section it belongs in for this reviewer, and the orders the queue can be sorted in.

Everything here reads; nothing decides. Who may review is ``approvals.rules.review_refusal`` (the function the
API and Slack use), and what is still needed is ``approvals.rules.still_needed``, beside ``approval_complete``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from django.db.models import Case, IntegerField, Value, When
from django.utils import timezone

from approvals.models import Decision, Risk, Ticket, TicketQuerySet
from approvals.rules import StillNeeded, review_refusal, still_needed
from identity.principal import Principal

# Critical first: the order reviewers read the queue in.
RISK_RANK: Mapping[str, int] = MappingProxyType({Risk.CRITICAL: 0, Risk.HIGH: 1, Risk.MODERATE: 2, Risk.LOW: 3})
_risk_rank = Case(
    *(When(risk=risk, then=Value(rank)) for risk, rank in RISK_RANK.items()),
    default=Value(len(RISK_RANK)),
    output_field=IntegerField(),
)

# ``?sort=`` values (an allowlist) and their orderings; the first is the default.
SORTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "risk": ("risk_rank", "expires_at", "id"),
        "expiry": ("expires_at", "risk_rank", "id"),
        "newest": ("-created_at", "-id"),
        "oldest": ("created_at", "id"),
        "datasource": ("datasource__name", "risk_rank", "expires_at", "id"),
    }
)
DEFAULT_SORT = "risk"

PREVIEW_CHARS = 120


class Section(enum.StrEnum):
    """Where a pending ticket goes on one reviewer's queue (the values are the tables' HTML ids)."""

    NEEDS_ME = "needs-my-review"
    OTHERS = "waiting-on-others"


def sort_key(requested: str | None) -> str:
    return requested if requested is not None and requested in SORTS else DEFAULT_SORT


def sorted_tickets(tickets: TicketQuerySet, sort: str) -> TicketQuerySet:
    return tickets.annotate(risk_rank=_risk_rank).order_by(*SORTS[sort_key(sort)])


def statement_preview(sql: str, limit: int = PREVIEW_CHARS) -> tuple[str, bool]:
    """The statement's first line that says something (not blank, not only a ``--`` comment), whitespace
    collapsed and cut at a word boundary near ``limit``; and whether anything was left out.

    A preview only: the ticket page shows every byte that will run.
    """
    lines = [line.strip() for line in sql.strip().splitlines()]
    meaningful = [index for index, line in enumerate(lines) if line and not line.startswith("--")]
    if not meaningful:
        return (" ".join(lines[0].split()) if lines else "")[:limit], len(lines) > 1
    first = meaningful[0]
    text = " ".join(lines[first].split())
    more = first != len(lines) - 1 and any(lines[first + 1 :])
    if len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        text = text[: cut if cut > limit // 2 else limit].rstrip()
        more = True
    return text, more


def countdown(until: datetime, now: datetime | None = None) -> str:
    """Time left: "14 min", "2 h 5 min", "3 days", or "expired" (the same words queue.js ticks with)."""
    seconds = int((until - (now or timezone.now())).total_seconds())
    if seconds <= 0:
        return "expired"
    minutes = max(1, seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"
    return f"{minutes // (24 * 60)} days"


def ago(moment: datetime, now: datetime | None = None) -> str:
    """How long a ticket has waited: "just now", "14 min ago", "3 h ago", "2 days ago"."""
    minutes = int(((now or timezone.now()) - moment).total_seconds()) // 60
    if minutes < 1:
        return "just now"
    if minutes < 60:
        return f"{minutes} min ago"
    if minutes < 48 * 60:
        return f"{minutes // 60} h ago"
    return f"{minutes // (24 * 60)} days ago"


@dataclass(frozen=True)
class QueueRow:
    """One pending ticket as a reviewer triages it."""

    ticket: Ticket
    preview: str
    preview_cut: bool
    approvals: int
    needed: StillNeeded
    section: Section
    waiting_because: str  # why it is not on "needs my review" (empty when it is)
    risk_rank: int
    expires_in: str
    # Rows the statement will touch, when an estimate is cached on the ticket (another change adds the field;
    # until then there is none and the row shows nothing).
    estimate: int | None


def queue_row(ticket: Ticket, principal: Principal) -> QueueRow:
    """``ticket`` should come with ``datasource``, ``agent``, ``owner`` and ``reviews__reviewer__groups``.

    "Needs my review": I may review it (``review_refusal``) and have not. Everything else waits on others: I
    already reviewed it, I asked for it (or my agent did), or it needs a group I am not in.
    """
    mine = next((review for review in ticket.reviews.all() if review.reviewer_id == principal.human.pk), None)
    refusal = review_refusal(ticket, principal)
    section, because = Section.NEEDS_ME, ""
    if mine is not None:
        section, because = Section.OTHERS, "you approved it" if mine.decision == Decision.APPROVE else "you reviewed it"
    elif refusal is not None:
        section, because = Section.OTHERS, refusal
    preview, cut = statement_preview(ticket.sql)
    estimate = getattr(ticket, "estimate_rows", None)
    return QueueRow(
        ticket=ticket,
        preview=preview,
        preview_cut=cut,
        approvals=sum(1 for review in ticket.reviews.all() if review.decision == Decision.APPROVE),
        needed=still_needed(ticket),
        section=section,
        waiting_because=because,
        risk_rank=RISK_RANK.get(ticket.risk, len(RISK_RANK)),
        expires_in=countdown(ticket.expires_at),
        estimate=estimate if isinstance(estimate, int) else None,
    )


def queue_rows(tickets: Iterable[Ticket], principal: Principal) -> dict[Section, list[QueueRow]]:
    """Pending tickets split into this reviewer's two sections, keeping the given order within each."""
    sections: dict[Section, list[QueueRow]] = {Section.NEEDS_ME: [], Section.OTHERS: []}
    for ticket in tickets:
        row = queue_row(ticket, principal)
        sections[row.section].append(row)
    return sections
