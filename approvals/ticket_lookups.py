"""The ticket page's look-ups: a row estimate and, for UPDATE and DELETE, a masked preview of the rows touched.

They are computed once per ticket, by the gateway (``gateway.ticket_lookups``: it holds the read-only credential),
and kept on the ticket (``Ticket.lookups``), so viewing a ticket never queries the target again. They are made
only while the ticket is pending and only for statements that touch rows (never for DDL), with the ticket's own
bind parameters. The person whose page view caused them is named in their audit events (``ticket.estimated``,
``ticket.previewed``), which are linked to the ticket: never a ``query.*`` event, which would say that person
ran the statement.

Who computes: the first viewer's page asks (``/tickets/N/estimate``, approvals.ticket_page.lookups_for). A
conditional UPDATE claims the ticket's look-ups (``{"state": "computing", "claim": token}``), so concurrent viewers
wait for one computation instead of starting their own; the gateway keeps the result only under that claim. A
claim left behind by a gateway that never answered goes stale and may be taken again.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from approvals.models import Status, Ticket
from audit.models import AuditEvent, EventKind
from audit.recorder import Context, record
from identity.principal import Principal
from policy.models import IdentityKind

ROW_STATEMENTS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
PREVIEWED_STATEMENTS = frozenset({"UPDATE", "DELETE"})
PREVIEW_LIMIT = 20
# The look-ups are kept once and shown to everyone who may open the ticket page: the requester's owner, other
# engineers' reviewers and compliance officers are all humans of one of these kinds. Each look-up is judged (the
# inference guard) and masked for all of them, the strictest winning, so nobody sees more than their own kind may.
LOOKUP_KINDS = (IdentityKind.ENGINEER.value, IdentityKind.REVIEWER.value)
COMPUTING = "computing"


def gateway_timeout_seconds() -> float:
    """An estimate (two EXPLAINs) and a preview: three reads, each within the read statement timeout."""
    return 3 * settings.READ_STATEMENT_TIMEOUT_MS / 1000 + 10


def _stale_after_seconds() -> float:
    return 2 * gateway_timeout_seconds()


def skip_reason(ticket: Ticket) -> str | None:
    """Why no look-up is made for this ticket (shown as is), or None when one is."""
    if ticket.status != Status.PENDING:
        return f"the ticket is {ticket.status}: look-ups are made only while it waits for review"
    kinds = list(ticket.statement_types)
    if len(kinds) != 1:
        return "it holds several statements; an estimate covers a single statement"
    if kinds[0] not in ROW_STATEMENTS:
        return f"{kinds[0]} changes the schema or the session, not rows: there is nothing to estimate"
    return None


@dataclass(frozen=True)
class Lookups:
    """What the page shows: the stored look-ups, or why there are none (yet)."""

    state: str  # done | computing | skipped | unavailable
    estimate: dict[str, Any] | None = None
    preview: dict[str, Any] | None = None
    message: str = ""


def stored_lookups(ticket: Ticket) -> Lookups | None:
    """The kept look-ups, or a claim in progress; None when nothing has been asked yet."""
    stored = ticket.lookups
    if not isinstance(stored, dict):
        return None
    if stored.get("state") == COMPUTING:
        return Lookups(state=COMPUTING, message="the gateway is computing the estimate")
    return Lookups(state="done", estimate=stored.get("estimate"), preview=stored.get("preview"))


def claim(ticket: Ticket) -> str | None:
    """Claim the computation of a pending ticket's look-ups; the claim's token, or None if another has it (or
    they are done). One conditional UPDATE decides it."""
    token = secrets.token_hex(12)
    now = time.time()
    claimed = (
        Ticket.objects.filter(pk=ticket.pk, status=Status.PENDING)
        .filter(
            Q(lookups__isnull=True) | Q(lookups__state=COMPUTING, lookups__claimed_at__lt=now - _stale_after_seconds())
        )
        .update(lookups={"state": COMPUTING, "claim": token, "claimed_at": now})
    )
    return token if claimed else None


def note_rows_shown(ticket: Ticket, principal: Principal, context: Context, *, what: str) -> None:
    """Record, once per person, that the page showed them stored (masked) rows of this ticket: the preview
    (``ticket.previewed``) or the execution's result (``ticket.result_read``). The gateway already recorded the
    look-up itself under the person who caused it; this covers everyone else who sees the rows."""
    kind = EventKind.TICKET_PREVIEWED if what == "preview" else EventKind.TICKET_RESULT_READ
    if AuditEvent.objects.filter(ticket_id=ticket.pk, kind=kind, actor=principal.human).exists():
        return
    summary = (
        "saw the masked preview of the rows the statement would touch on the ticket page"
        if what == "preview"
        else "saw the masked result on the ticket page"
    )
    with transaction.atomic():
        record(
            kind,
            principal=principal,
            context=context,
            datasource=ticket.datasource.name,
            ticket_id=ticket.pk,
            summary=summary,
            details={"lookup": what, "read_from_target": False, "shown_on": "ticket page"},
        )
