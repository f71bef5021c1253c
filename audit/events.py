"""The audit vocabulary: every event the product records is built here, and written in one column order.

Why one module: the same event used to be spelled in several places (the HTTP pipeline's dicts, the wire
session's hand-made JSON, EXPLAIN, the executor), and they drifted: HTTP linked a result to its statement by the
statement record's row id, the wire by a statement id, and a wire statement that failed in PostgreSQL had no
outcome record at all. Here:

* ``COLUMNS`` is the one column list. ``Event.row`` gives the values the ORM inserts, ``Event.line`` the
  COPY text line the gateway's journal and batch writer ship (audit.journal_format), from the same values.
* ``LINK`` (``details.statement_id``) is the one key from a statement's record to its outcome. Ids are made
  by the writer of the statement record (``new_statement_id``, the wire session's counter), or are the
  ticket's (``ticket_statement_id``) for a statement held for approval, whose outcome the executor or a
  reviewer records later, knowing only the ticket.
* Every statement ends in exactly one outcome record (invariant 6), one of ``StatementOutcome``. Which event
  kinds are outcomes is said once, in ``OUTCOME_OF``.
* The constructors below are typed: a failure takes a ``StatementError`` (SQLSTATE and the message already
  scrubbed by policy.errors), never a raw database message, which can echo PHI.

The chain (audit.canonical, audit.chain) hashes the stored columns, whatever wrote them, so nothing here changes
how an existing event is hashed; old events keep their old links and are still read (``statement_key``).
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from django.utils import timezone

from audit.canonical import EVENT_FIELDS
from audit.journal_format import copy_field, copy_line
from audit.models import AuditEvent, EventKind, Outcome
from identity.principal import Principal
from policy.errors import scrub_error
from policy.patient_keys import PatientAccess

# The order in which events travel as COPY lines (the journal, the batch writer) and are inserted by them: the
# chain's hashed fields (audit.canonical, which the offline verifier imports alone), less the id the database
# assigns, with the details as stored rather than as hashed text. One list, so the two cannot drift apart.
COLUMNS: Final = tuple("details" if name == "details_text" else name for name in EVENT_FIELDS if name != "id")
# The columns one wire session writes the same in every event (``SessionLines`` formats them once).
SESSION_COLUMNS: Final = COLUMNS[COLUMNS.index("actor_id") : COLUMNS.index("statement")]

LINK: Final = "statement_id"  # the details key that ties a statement's record to its outcome record
_JSON = json.JSONEncoder(separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Context:
    """Where a request came from; carried from the front (HTTP, wire, MCP) down to every event it causes."""

    front: str = ""
    source_address: str | None = None
    session_id: str = ""


class StatementOutcome(enum.StrEnum):
    """How a statement ended. Each statement gets exactly one record saying so, on every front."""

    EXECUTED = "executed"
    FAILED = "failed"  # PostgreSQL (or the gateway, or the executor) reported an error: SQLSTATE recorded
    REFUSED = "refused"  # denied by policy, invalid, or held and then rejected or expired: never ran
    CANCELLED = "cancelled"  # held, and the requester withdrew it


# Which kinds of event are a statement's outcome. A statement's own record (query.submitted, ticket.created)
# is not, except a refusal, which is both: the statement was judged and ended there.
OUTCOME_OF: Final[Mapping[EventKind, StatementOutcome]] = {
    EventKind.QUERY_EXECUTED: StatementOutcome.EXECUTED,
    EventKind.QUERY_FAILED: StatementOutcome.FAILED,
    EventKind.QUERY_DENIED: StatementOutcome.REFUSED,
    EventKind.TICKET_EXECUTED: StatementOutcome.EXECUTED,
    EventKind.TICKET_FAILED: StatementOutcome.FAILED,
    EventKind.TICKET_REJECTED: StatementOutcome.REFUSED,
    EventKind.TICKET_EXPIRED: StatementOutcome.REFUSED,
    EventKind.TICKET_CANCELLED: StatementOutcome.CANCELLED,
}
# The record of a statement as it was sent (its outcome comes later, linked by ``LINK``).
STATEMENT_KINDS: Final = frozenset({EventKind.QUERY_SUBMITTED, EventKind.TICKET_CREATED})


def outcome_of(kind: str) -> StatementOutcome | None:
    """The statement outcome an event of this kind records, or None for any other event."""
    try:
        return OUTCOME_OF.get(EventKind(kind))
    except ValueError:
        return None


def new_statement_id() -> str:
    """A statement id for a front that has no session counter of its own (HTTP, MCP, EXPLAIN, refusals)."""
    return uuid.uuid4().hex


def ticket_statement_id(ticket_id: int) -> str:
    """A held statement's id: its outcome is recorded by whoever finishes the ticket, who knows only the ticket."""
    return f"ticket-{ticket_id}"


def statement_key(event_id: int, kind: str, details: Mapping[str, Any]) -> str:
    """The linking key of a stored event (replay, reports). Events written before the one key existed linked an
    HTTP result by the statement record's row id (``submitted_event``): those are mapped onto the same key."""
    if details.get(LINK):
        return str(details[LINK])
    if details.get("submitted_event") is not None:
        return f"event-{details['submitted_event']}"
    return f"event-{event_id}" if kind == EventKind.QUERY_SUBMITTED else ""


@dataclass(frozen=True)
class StatementError:
    """A statement's failure as it may be recorded and shown: SQLSTATE, and the message scrubbed by
    policy.errors (kept verbatim only when the statement touches no PHI)."""

    sqlstate: str
    message: str

    @classmethod
    def scrubbed(cls, sqlstate: str | None, raw_message: str | None, *, touches_phi: bool) -> StatementError:
        state = sqlstate or "XX000"
        return cls(state, scrub_error(state, raw_message or "statement failed", touches_phi=touches_phi))


@dataclass(frozen=True)
class Event:
    """One audit event before it is written. ``row`` for the ORM, ``line`` for the journal: the same values."""

    kind: EventKind
    principal: Principal | None
    context: Context = field(default_factory=Context)
    outcome: Outcome = Outcome.SUCCESS
    datasource: str = ""
    ticket_id: int | None = None
    statement: str = ""
    summary: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    attempted_name: str = ""  # who a failed authentication claimed to be (there is no principal)

    def row(self) -> dict[str, Any]:
        principal, ctx = self.principal, self.context
        agent = principal.agent if principal else None
        return {
            "occurred_at": timezone.now(),
            "kind": str(self.kind),
            "outcome": str(self.outcome),
            "actor_id": principal.human.pk if principal else None,
            "actor_name": principal.human.get_username() if principal else "",
            "agent_id": agent.pk if agent else None,
            "agent_name": (agent.name if agent else self.attempted_name)[:63],
            "datasource": self.datasource[:63],
            "ticket_id": self.ticket_id,
            "front": ctx.front,
            "source_address": ctx.source_address or None,
            "session_id": ctx.session_id,
            "statement": self.statement,
            "summary": self.summary,
            "details": dict(self.details),
        }

    def line(self) -> bytes:
        return copy_line(self.row(), COLUMNS)

    def record(self) -> AuditEvent:
        """Insert now (ORM), in the caller's transaction."""
        return AuditEvent.objects.create(**self.row())


def masking_details(masking: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """How a result was masked, for an event's details: per column, and the PHI types as a flat list that the
    search's GIN index can match by containment."""
    return {
        "masking": {column: dict(spec) for column, spec in masking.items()},
        "phi_types": sorted({str(spec.get("phi_type", "")) for spec in masking.values()} - {""}),
    }


# --- statements -------------------------------------------------------------------------------------------------

SUBMITTED_SUMMARY: Final = "allowed: provably read-only"


def submitted(
    principal: Principal,
    context: Context,
    *,
    datasource: str,
    statement: str,
    statement_id: str,
    details: Mapping[str, Any],
    summary: str = SUBMITTED_SUMMARY,
) -> Event:
    """An allowed statement, recorded before it runs (its rows wait for this record)."""
    return Event(
        EventKind.QUERY_SUBMITTED,
        principal,
        context,
        datasource=datasource,
        statement=statement,
        summary=summary,
        details={**details, LINK: statement_id},
    )


def executed(
    principal: Principal,
    context: Context,
    *,
    datasource: str,
    statement_id: str,
    rowcount: int,
    truncated: bool,
    masking: Mapping[str, Mapping[str, str]],
    result_sha256: str,
    duration_ms: float,
    preview: Mapping[str, Any] | None = None,
    patients: PatientAccess | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Event:
    """An allowed statement's outcome when it ran: what was sent back (rows, masks, digest, a masked preview)
    and, when the rows came from patient tables, whose they were (``patients``: pseudonymised keys, or that
    the result did not say; policy.patient_keys)."""
    return Event(
        EventKind.QUERY_EXECUTED,
        principal,
        context,
        datasource=datasource,
        summary=executed_summary(rowcount, truncated),
        details={
            LINK: statement_id,
            "rowcount": rowcount,
            "truncated": truncated,
            **masking_details(masking),
            "result_sha256": result_sha256,
            "duration_ms": duration_ms,
            "preview": preview or {"columns": [], "rows": []},
            **patient_details(patients),
            **(extra or {}),
        },
    )


def patient_details(patients: PatientAccess | None) -> dict[str, Any]:
    """The accounting member of an executed record's details: ``patients``, absent when the result disclosed
    nothing about patients. The search finds a patient's reads by containment of one pseudonym
    (``AuditEventQuerySet.disclosing_patient``, on the details' GIN index)."""
    return {} if patients is None else {"patients": patients.details()}


def executed_summary(rowcount: int, truncated: bool = False) -> str:
    return f"{rowcount} rows returned" + (" (truncated)" if truncated else "")


def failed(
    principal: Principal,
    context: Context,
    *,
    datasource: str,
    statement_id: str,
    error: StatementError,
    extra: Mapping[str, Any] | None = None,
) -> Event:
    """An allowed statement's outcome when it did not complete: PostgreSQL's error, a cancel, a lost session."""
    return Event(
        EventKind.QUERY_FAILED,
        principal,
        context,
        outcome=Outcome.FAILURE,
        datasource=datasource,
        summary=error.message,
        details=failure_details(statement_id, error, extra),
    )


def failure_details(statement_id: str, error: StatementError, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {LINK: statement_id, "sqlstate": error.sqlstate, "error": error.message, **(extra or {})}


def refused(
    principal: Principal,
    context: Context,
    *,
    datasource: str,
    statement: str,
    summary: str,
    details: Mapping[str, Any] | None = None,
    statement_id: str = "",
) -> Event:
    """A statement refused before it ran (denied, invalid): its record and its outcome at once."""
    return Event(
        EventKind.QUERY_DENIED,
        principal,
        context,
        outcome=Outcome.DENIED,
        datasource=datasource,
        statement=statement,
        summary=summary,
        details={**(details or {}), LINK: statement_id or new_statement_id()},
    )


# --- statements held for approval -------------------------------------------------------------------------------


def ticket_created(
    principal: Principal,
    context: Context,
    *,
    datasource: str,
    ticket_id: int,
    statement: str,
    summary: str,
    details: Mapping[str, Any],
) -> Event:
    """A held statement's record: its outcome is the ticket's end (``ticket_outcome``)."""
    return Event(
        EventKind.TICKET_CREATED,
        principal,
        context,
        outcome=Outcome.HELD,
        datasource=datasource,
        ticket_id=ticket_id,
        statement=statement,
        summary=summary,
        details={**details, LINK: ticket_statement_id(ticket_id)},
    )


_TICKET_OUTCOME_KINDS: Final = {
    StatementOutcome.EXECUTED: EventKind.TICKET_EXECUTED,
    StatementOutcome.FAILED: EventKind.TICKET_FAILED,
    StatementOutcome.CANCELLED: EventKind.TICKET_CANCELLED,
}
_TICKET_REFUSALS: Final = frozenset({EventKind.TICKET_REJECTED, EventKind.TICKET_EXPIRED})
# The event's own outcome column, as these events have always had it (a rejection is a reviewer's denial).
_COLUMN_OUTCOMES: Final = {
    EventKind.TICKET_EXECUTED: Outcome.SUCCESS,
    EventKind.TICKET_FAILED: Outcome.FAILURE,
    EventKind.TICKET_CANCELLED: Outcome.SUCCESS,
    EventKind.TICKET_REJECTED: Outcome.DENIED,
    EventKind.TICKET_EXPIRED: Outcome.FAILURE,
}


def ticket_outcome(
    outcome: StatementOutcome,
    principal: Principal,
    context: Context,
    *,
    datasource: str,
    ticket_id: int,
    summary: str,
    details: Mapping[str, Any] | None = None,
    error: StatementError | None = None,
    refusal: EventKind | None = None,
) -> Event:
    """How a held statement ended. ``refusal`` names which refusal (rejected or expired) for REFUSED; a FAILED
    one carries its ``error`` (SQLSTATE, when the target reported one, and the scrubbed message)."""
    if outcome is StatementOutcome.REFUSED:
        if refusal not in _TICKET_REFUSALS:
            raise ValueError(f"a refused ticket is rejected or expired, not {refusal}")
        kind = EventKind(refusal)
    else:
        kind = _TICKET_OUTCOME_KINDS[outcome]
    body: dict[str, Any] = {**(details or {}), LINK: ticket_statement_id(ticket_id)}
    if outcome is StatementOutcome.FAILED:
        if error is None:
            raise ValueError("a failed ticket says why (its StatementError)")
        body.update(sqlstate=error.sqlstate, error=error.message)
    return Event(
        kind,
        principal,
        context,
        outcome=_COLUMN_OUTCOMES[kind],
        datasource=datasource,
        ticket_id=ticket_id,
        summary=summary,
        details=body,
    )


# --- the audit trail's own readers ------------------------------------------------------------------------------


def audit_viewed(principal: Principal, context: Context, *, event_id: int) -> Event:
    """A compliance officer opened one event in full (its page shows the statement, masks and chain position).

    Its own kind, not ``audit.searched``: a search says what was looked for, this says which record was read,
    and an access review wants to count and find the two apart.
    """
    return Event(
        EventKind.AUDIT_VIEWED,
        principal,
        context,
        summary=f"audit event {event_id} viewed",
        details={"event": event_id},
    )


def disclosures_listed(
    principal: Principal, context: Context, *, datasource: str, key_name: str, pseudonym: str, reads: int
) -> Event:
    """A compliance officer listed the reads of one patient (audit.accounting): which patient by pseudonym and kind
    of key, never the key that was typed (invariant 7), and how many reads were found."""
    return Event(
        EventKind.AUDIT_DISCLOSURES_LISTED,
        principal,
        context,
        datasource=datasource,
        summary=f"accounting of disclosures: reads of one patient ({key_name}) listed, {reads} found",
        details={"key_name": key_name, "pseudonym": pseudonym, "reads": reads},
    )


# --- the wire session's lines -----------------------------------------------------------------------------------


class SessionLines:
    """A wire session's statement events as COPY lines, built without a dict per event.

    Every statement of a wire session produces events whose columns are mostly the same for the whole session
    (``SESSION_COLUMNS``: who, which agent, which data source, from where, which session). Those are formatted
    once; per event only the time, kind, statement, summary and details are. Each method gives byte for byte
    what the constructor of the same name gives as ``Event.line()``, but the time (tests/test_audit_journal.py).
    """

    def __init__(self, principal: Principal, context: Context, datasource: str) -> None:
        constant = Event(EventKind.QUERY_SUBMITTED, principal, context, datasource=datasource).row()
        self._middle = "\t".join(copy_field(constant[name]) for name in SESSION_COLUMNS)

    def submitted(self, statement: str, details_prefix: str, statement_id: str) -> bytes:
        """``details_prefix``: the decision's details as JSON without the closing brace (``json_prefix``)."""
        details = f'{details_prefix}"{LINK}":"{statement_id}"}}'
        return self._line(EventKind.QUERY_SUBMITTED, Outcome.SUCCESS, statement, SUBMITTED_SUMMARY, details)

    def executed(
        self,
        statement_id: str,
        *,
        rowcount: int,
        masking_json: str,
        result_sha256: str,
        duration_ms: float,
        preview: Mapping[str, Any],
        patients: PatientAccess | None = None,
    ) -> bytes:
        """``masking_json``: ``masking_details`` as JSON members without braces (``json_members``)."""
        accounting = "" if patients is None else f',"patients":{_JSON.encode(patients.details())}'
        details = (
            f'{{"{LINK}":"{statement_id}","rowcount":{rowcount},"truncated":false,{masking_json},'
            f'"result_sha256":"{result_sha256}","duration_ms":{duration_ms},"preview":{_JSON.encode(preview)}'
            f"{accounting}}}"
        )
        return self._line(EventKind.QUERY_EXECUTED, Outcome.SUCCESS, "", executed_summary(rowcount), details)

    def failed(self, statement_id: str, error: StatementError, extra: Mapping[str, Any] | None = None) -> bytes:
        details = _JSON.encode(failure_details(statement_id, error, extra))
        return self._line(EventKind.QUERY_FAILED, Outcome.FAILURE, "", error.message, details)

    def _line(self, kind: EventKind, outcome: Outcome, statement: str, summary: str, details: str) -> bytes:
        return (
            f"{datetime.now(UTC).isoformat()}\t{kind.value}\t{outcome.value}\t{self._middle}\t"
            f"{copy_field(statement)}\t{copy_field(summary)}\t{copy_field(details)}\n"
        ).encode()


def json_prefix(details: Mapping[str, Any]) -> str:
    """Details as compact JSON without the closing brace, ready for more members (cached per decision)."""
    prefix = _JSON.encode(dict(details))[:-1]
    return prefix + "," if prefix != "{" else prefix


def json_members(details: Mapping[str, Any]) -> str:
    """Details as compact JSON members without the braces, to be spliced into a larger object."""
    return _JSON.encode(dict(details))[1:-1]
