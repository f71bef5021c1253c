"""Executing approved tickets, exactly once, in the executor process (the only holder of the write credential).

Sequence for one ticket, all of it under the ticket's executor lock (approvals.execution_lock):
1. lock: a session-level advisory lock on the control plane; if another executor holds it, stop here (it is
   alive and will settle the ticket).
2. claim: APPROVED (and approval still valid) -> EXECUTING, one conditional UPDATE. An approval that lapsed
   before any claim is failed without running: only a claim leads to the target, so nothing was changed.
3. run on the target inside the ledger transaction (approvals.statement_runner.run_once). The ledger ends with
   one committed row for the ticket: the statement's, or a fence that says why it did not run.
4. finish: EXECUTING -> EXECUTED or FAILED, from that row, in the same transaction as its audit event. Only then
   does the lock go.

A ticket found EXECUTING with its lock free has lost its executor (step 4 commits before the lock goes, and a
dead process's session, lock included, ends with it). Whoever takes the lock recovers it through the same step 3:
run_once first takes the ledger key, which waits for any session still holding it (an orphaned backend rolling
back, a COMMIT in flight), and only then decides. A committed row is the truth (EXECUTED, not run again);
without one, the statement runs if the approval is still valid, or a fence commits and the ticket fails, with
nothing changed provably. A ticket whose executor is alive is never touched: its lock is held.

Tickets reach here from the approval's enqueue after commit and from the execution sweep, which finds every
APPROVED or EXECUTING ticket whose lock is free (approvals.lifecycle.unattended_approvals, approvals.tasks).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from approvals.execution_lock import ExecutorLock
from approvals.ledger import NotRun
from approvals.models import Status, Ticket
from approvals.notify import publish_change_on_commit
from approvals.statement_runner import (
    LedgerEntry,
    LockLost,
    Outcome,
    RawResult,
    TargetUnreachable,
    run_once,
    settle,
)
from approvals.tags_follow_data import tags_follow_data
from audit import events
from audit.events import Context, StatementError, StatementOutcome, masking_details
from audit.models import EventKind
from audit.preview import result_preview
from audit.recorder import record
from identity.principal import Principal
from policy.catalog_cache import CatalogCache
from policy.classifier import classify
from policy.credentials import Access, target_url
from policy.errors import scrub_error
from policy.lineage import ParseError, UnsupportedStatement, analyze
from policy.lineage_masking import plan_for_result
from policy.masking import require_pseudonym_key
from policy.patient_keys import require_patient_key, rows_disclosed
from policy.result_values import describe_columns, result_columns

PATIENTS = "patients"  # the outcome record's accounting of disclosures (policy.patient_keys)
log = logging.getLogger(__name__)

NOTHING_CHANGED = "nothing was changed"

# Why a fenced ticket failed, for the requester; each ends in NOTHING_CHANGED because the fence proves it.
_NOT_RUN_MESSAGES = {
    NotRun.APPROVAL_LAPSED: "the approval lapsed before the statement could start",
    NotRun.DIGEST_MISMATCH: "statement bytes differ from the approved digest; refusing to run",
    NotRun.CLIENT_COPY: "COPY to or from the client cannot run in the executor, which has no client to stream "
    "rows to or from",
    NotRun.TRANSACTION_CONTROL: "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT) cannot run inside the "
    "executor's transaction",
    NotRun.STATEMENT_FAILED: "the statement failed on the target and was rolled back",
    NotRun.EXECUTOR_ERROR: "internal error in the executor before the statement could commit",
}
# The SQLSTATE of a ticket that failed without an error of the target's own (the wire's HA004 answer).
APPROVED_BUT_FAILED = "HA004"
_LAPSED_IN_RECOVERY = "the executor stopped before the statement committed and the approval has since lapsed"


def worker_context(ticket: Ticket) -> Context:
    """The executor acts in the session that asked for the statement, so its replay shows the outcome."""
    return Context(front="worker", session_id=ticket.session_id)


_catalogs = CatalogCache(Access.WRITE)


@dataclass(frozen=True)
class ExecutionReport:
    ticket_id: int
    status: str
    ran_now: bool


def _principal(ticket: Ticket) -> Principal:
    return Principal(human=ticket.owner, agent=ticket.agent)


def _claim(ticket_id: int) -> bool:
    now = timezone.now()
    with transaction.atomic():
        claimed = Ticket.objects.filter(pk=ticket_id, status=Status.APPROVED, approval_valid_until__gt=now).update(
            status=Status.EXECUTING, execution_started_at=now, execution_attempts=F("execution_attempts") + 1
        )
        if claimed:
            ticket = Ticket.objects.select_related("datasource", "owner", "agent").get(pk=ticket_id)
            record(
                EventKind.TICKET_EXECUTION_STARTED,
                principal=_principal(ticket),
                context=worker_context(ticket),
                datasource=ticket.datasource.name,
                ticket_id=ticket_id,
                summary="executor started the approved statement",
                details={"sql_sha256": ticket.sql_sha256},
            )
            publish_change_on_commit(ticket_id, Status.EXECUTING)
    return bool(claimed)


def _finish(
    ticket: Ticket,
    *,
    status: Status,
    rowcount: int | None,
    result: dict | None,
    error: StatementError | None,
    how: str,
) -> None:
    """The ticket's end and its statement's outcome record, in one transaction. ``error``: why it failed.
    The outcome record of an executed read says which patients its stored rows name (the accounting of
    disclosures: the requester reads those rows); the stored result the requester reads does not."""
    result = dict(result) if result is not None else None
    patients = result.pop(PATIENTS, None) if result is not None else None
    with transaction.atomic():
        changed = Ticket.objects.filter(pk=ticket.pk, status=Status.EXECUTING).update(
            status=status,
            executed_at=timezone.now(),
            rowcount=rowcount,
            result=result,
            error=error.message if error else "",
        )
        if not changed:
            return  # another executor (or recovery) finished it first, from the same ledger truth
        events.ticket_outcome(
            StatementOutcome.EXECUTED if status == Status.EXECUTED else StatementOutcome.FAILED,
            _principal(ticket),
            worker_context(ticket),
            datasource=ticket.datasource.name,
            ticket_id=ticket.pk,
            summary=f"{status}: {how}" + (f" ({rowcount} rows)" if rowcount is not None else ""),
            details={
                "rowcount": rowcount,
                "error": "",
                **masking_details((result or {}).get("masking", {})),
                "preview": result_preview((result or {}).get("columns", []), (result or {}).get("rows", [])),
                "truncated": (result or {}).get("truncated", False),
                **({PATIENTS: patients} if patients else {}),
            },
            error=error,
        ).record()
        publish_change_on_commit(ticket.pk, status)


def _failure(message: str, sqlstate: str | None = None) -> StatementError:
    """An executor failure the target did not report itself: the wire's "approved but failed" code."""
    return StatementError(sqlstate or APPROVED_BUT_FAILED, message)


def _fail_without_running(ticket_id: int, *, from_status: Status, error: str) -> None:
    ticket = Ticket.objects.select_related("datasource", "owner", "agent").get(pk=ticket_id)
    with transaction.atomic():
        changed = Ticket.objects.filter(pk=ticket_id, status=from_status).update(
            status=Status.EXECUTING, execution_started_at=timezone.now()
        )
    if changed:
        _finish(ticket, status=Status.FAILED, rowcount=None, result=None, error=_failure(error), how=error)


def _masked_result_maker(ticket: Ticket, url: str):  # type: ignore[no-untyped-def]
    key = require_pseudonym_key()
    requester = _principal(ticket)  # results are masked for whoever asked, not for the executor
    catalog = _catalogs.get(ticket.datasource.name, url)
    if catalog.patient_keys:
        require_patient_key()  # before anything runs: no result without its accounting of disclosures
    classification = classify(ticket.sql, catalog.functions, relations=catalog)
    try:
        lineage = analyze(ticket.sql, catalog)
    except (ParseError, UnsupportedStatement):
        lineage = None  # not a plain read (or not analysable): the fail-closed column plan applies

    def finish(raw: RawResult) -> dict[str, object]:
        plan = plan_for_result(raw.origins, classification, lineage, catalog, requester.identity_kind)
        disclosed = rows_disclosed(
            datasource=ticket.datasource.name,
            classification=classification,
            lineage=lineage,
            catalog=catalog,
            patient_keys=plan.patient_keys,
            columns=raw.columns,
            rows=raw.rows,
        )
        return {
            # Which patients the stored rows name (policy.patient_keys), for the outcome record only: ``_finish``
            # takes it out of what the requester can read.
            PATIENTS: disclosed.details() if disclosed is not None else None,
            "columns": raw.columns,
            # Types and masks per column: the result API gives values their JSON types from these (read_result).
            "column_types": describe_columns(result_columns(raw.columns, raw.type_oids, plan, catalog.types)),
            "rows": plan.apply(raw.rows, key),
            "truncated": raw.truncated,
            "masking": plan.describe(raw.columns),
            "command_tag": raw.command_tag,
        }

    return finish


def execute_ticket(ticket_id: int, *, recovering: bool = False) -> ExecutionReport:
    """Run an approved ticket, or recover one whose executor is gone. Safe to call any number of times, from any
    number of processes: the statement runs at most once. ``recovering`` is ignored (the lock now tells)."""
    with ExecutorLock(ticket_id) as lock:
        if not lock.acquired:  # a live executor is on it and will settle it
            return ExecutionReport(ticket_id, _status(ticket_id), False)
        return _execute_locked(ticket_id, lock)


def _status(ticket_id: int) -> str:
    return str(Ticket.objects.values_list("status", flat=True).get(pk=ticket_id))


def _execute_locked(ticket_id: int, lock: ExecutorLock) -> ExecutionReport:
    status = _status(ticket_id)
    if status == Status.APPROVED:
        if not _claim(ticket_id):  # with the lock held, only a lapsed approval stops the claim
            _fail_without_running(
                ticket_id,
                from_status=Status.APPROVED,
                error=f"approval expired before execution started; {NOTHING_CHANGED}",
            )
            return ExecutionReport(ticket_id, _status(ticket_id), False)
        recovering = False
    elif status == Status.EXECUTING:
        # The lock was free, so whoever claimed it is gone: the ledger says what happened.
        log.warning("ticket %s was left executing by an executor that is gone; recovering it", ticket_id)
        recovering = True
    else:
        return ExecutionReport(ticket_id, status, False)

    ticket = Ticket.objects.select_related("datasource", "owner", "agent").get(pk=ticket_id)
    valid_until = ticket.approval_valid_until
    lapsed = valid_until is None or valid_until <= timezone.now()
    try:
        url = target_url(ticket.datasource.name, Access.WRITE)
        if not lapsed:
            finish, before_commit = _masked_result_maker(ticket, url), tags_follow_data(ticket)
    except Exception as exc:  # no write credential here, the target's catalog unreadable, ...
        log.exception("ticket %s: the statement could not be prepared", ticket_id)
        return _not_started(ticket, lock, recovering, f"the executor could not prepare the statement ({exc})")
    started = time.monotonic()
    try:
        if lapsed:
            outcome = Outcome(_settle(ticket, url, NotRun.APPROVAL_LAPSED), ran_now=False)
        else:
            outcome = run_once(
                url=url,
                execution_key=str(ticket.execution_key),
                ticket_id=ticket.pk,
                sql=ticket.sql,
                params=ticket.statement_params,
                approved_sha256=ticket.sql_sha256,
                statement_timeout_ms=settings.EXECUTION_STATEMENT_TIMEOUT_MS,
                row_cap=settings.RESULT_ROW_CAP,
                finish=finish,
                before_commit=before_commit,
                valid_until=valid_until,
                still_held=lock.still_held,
            )
    except LockLost:
        log.warning("ticket %s: executor lock lost before the statement; left for whoever holds it now", ticket_id)
        return ExecutionReport(ticket_id, Status.EXECUTING, False)
    except TargetUnreachable as exc:
        why = scrub_error(exc.sqlstate, exc.message, touches_phi=True)
        return _not_started(ticket, lock, recovering, why, sqlstate=exc.sqlstate)
    except Exception:
        # The statement's fate is unknown here (a lost session, an error around the key): ask the ledger.
        log.exception("execution of ticket %s failed unexpectedly; settling it from the ledger", ticket_id)
        try:
            outcome = Outcome(_settle(ticket, url, NotRun.EXECUTOR_ERROR), ran_now=False)
        except Exception:
            log.exception("ledger of ticket %s unreachable; left executing for the next sweep", ticket_id)
            return ExecutionReport(ticket_id, Status.EXECUTING, False)
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    return _record(ticket, outcome, duration_ms, recovering)


def _settle(ticket: Ticket, url: str, reason: NotRun) -> LedgerEntry:
    return settle(
        url,
        str(ticket.execution_key),
        ticket.pk,
        ticket.sql_sha256,
        reason,
        lock_timeout_ms=settings.EXECUTION_STATEMENT_TIMEOUT_MS + 30_000,
    )


def _not_started(
    ticket: Ticket, lock: ExecutorLock, recovering: bool, why: str, *, sqlstate: str | None = None
) -> ExecutionReport:
    """Nothing was sent to the target. Final only when this executor made the claim and still holds the lock:
    then no other executor can have run it. In recovery, an earlier executor might still be alive behind a lost
    lock, so the ticket waits for a ledger that can be read."""
    if recovering or not lock.still_held():
        log.warning("ticket %s not started (%s); left executing for the next sweep", ticket.pk, why)
        return ExecutionReport(ticket.pk, Status.EXECUTING, False)
    error = _failure(f"{why}; {NOTHING_CHANGED}", sqlstate)
    _finish(ticket, status=Status.FAILED, rowcount=None, result=None, error=error, how="not started")
    return ExecutionReport(ticket.pk, Status.FAILED, False)


def _record(ticket: Ticket, outcome: Outcome, duration_ms: float, recovering: bool) -> ExecutionReport:
    entry = outcome.entry
    if entry.ran:
        result = dict(entry.result or {})
        result["duration_ms"] = duration_ms if outcome.ran_now else None
        how = "ran" if outcome.ran_now else "found committed in the target's ledger (not run again)"
        _finish(ticket, status=Status.EXECUTED, rowcount=entry.rowcount, result=result, error=None, how=how)
        return ExecutionReport(ticket.pk, Status.EXECUTED, outcome.ran_now)
    reason = entry.not_run or NotRun.EXECUTOR_ERROR
    if outcome.error is not None:  # the statement failed here: its own (scrubbed) error says the most
        error = StatementError.scrubbed(outcome.error.sqlstate, outcome.error.message, touches_phi=True)
    elif reason == NotRun.APPROVAL_LAPSED and recovering:
        error = _failure(f"{_LAPSED_IN_RECOVERY}; {NOTHING_CHANGED}")
    else:
        sqlstate = f" (SQLSTATE {entry.sqlstate})" if entry.sqlstate else ""
        error = _failure(f"{_NOT_RUN_MESSAGES[reason]}{sqlstate}; {NOTHING_CHANGED}", entry.sqlstate)
    how = "recovered after executor loss" if recovering else str(reason).replace("_", " ")
    _finish(ticket, status=Status.FAILED, rowcount=None, result=None, error=error, how=how)
    return ExecutionReport(ticket.pk, Status.FAILED, False)
