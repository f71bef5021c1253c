"""Executing approved tickets, exactly once, in the executor process (the only holder of the write credential).

Sequence for one ticket:
1. claim: APPROVED (and approval still valid) -> EXECUTING, one conditional UPDATE; losers stop.
2. run on the target inside the ledger transaction (approvals.statement_runner.run_once).
3. finish: EXECUTING -> EXECUTED or FAILED with the outcome, in the same transaction as its audit event.

A crash between 2 and 3 leaves the ticket EXECUTING; recovery (at worker start) reads the ledger: a committed
entry means it ran (finish as EXECUTED with the ledger's rowcount); none means it never committed, so it is run
again if the approval is still valid, or failed truthfully if not.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from approvals.models import Status, Ticket
from approvals.notify import publish_change_on_commit
from approvals.statement_runner import DigestMismatch, LedgerEntry, RawResult, TargetError, ledger_entry, run_once
from approvals.tags_follow_data import tags_follow_data
from audit.models import EventKind, Outcome
from audit.preview import result_preview
from audit.recorder import Context, masking_details, record
from identity.principal import Principal
from policy.catalog_cache import CatalogCache
from policy.classifier import classify
from policy.credentials import Access, target_url
from policy.errors import scrub_error
from policy.lineage import ParseError, UnsupportedStatement, analyze
from policy.lineage_masking import plan_for_result
from policy.masking import require_pseudonym_key
from policy.result_values import describe_columns, result_columns

log = logging.getLogger(__name__)


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


def _finish(ticket: Ticket, *, status: Status, rowcount: int | None, result: dict | None, error: str, how: str) -> None:
    with transaction.atomic():
        changed = Ticket.objects.filter(pk=ticket.pk, status=Status.EXECUTING).update(
            status=status, executed_at=timezone.now(), rowcount=rowcount, result=result, error=error
        )
        if not changed:
            return  # another executor (or recovery) finished it first, from the same ledger truth
        record(
            EventKind.TICKET_EXECUTED if status == Status.EXECUTED else EventKind.TICKET_FAILED,
            principal=_principal(ticket),
            context=worker_context(ticket),
            outcome=Outcome.SUCCESS if status == Status.EXECUTED else Outcome.FAILURE,
            datasource=ticket.datasource.name,
            ticket_id=ticket.pk,
            summary=f"{status}: {how}" + (f" ({rowcount} rows)" if rowcount is not None else ""),
            details={
                "rowcount": rowcount,
                "error": error,
                **masking_details((result or {}).get("masking", {})),
                "preview": result_preview((result or {}).get("columns", []), (result or {}).get("rows", [])),
                "truncated": (result or {}).get("truncated", False),
            },
        )
        publish_change_on_commit(ticket.pk, status)


def _fail_without_running(ticket_id: int, *, from_status: Status, error: str) -> None:
    ticket = Ticket.objects.select_related("datasource", "owner", "agent").get(pk=ticket_id)
    with transaction.atomic():
        changed = Ticket.objects.filter(pk=ticket_id, status=from_status).update(
            status=Status.EXECUTING, execution_started_at=timezone.now()
        )
    if changed:
        _finish(ticket, status=Status.FAILED, rowcount=None, result=None, error=error, how=error)


def _masked_result_maker(ticket: Ticket, url: str):  # type: ignore[no-untyped-def]
    key = require_pseudonym_key()
    requester = _principal(ticket)  # results are masked for whoever asked, not for the executor
    catalog = _catalogs.get(ticket.datasource.name, url)
    classification = classify(ticket.sql, catalog.functions, relations=catalog)
    try:
        lineage = analyze(ticket.sql, catalog)
    except (ParseError, UnsupportedStatement):
        lineage = None  # not a plain read (or not analysable): the fail-closed column plan applies

    def finish(raw: RawResult) -> dict[str, object]:
        plan = plan_for_result(raw.origins, classification, lineage, catalog, requester.identity_kind)
        return {
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
    """Run an approved ticket. Safe to call any number of times for the same ticket: it runs at most once."""
    if not _claim(ticket_id):
        ticket = Ticket.objects.get(pk=ticket_id)
        if ticket.status == Status.APPROVED:  # claim lost only because the approval lapsed
            _fail_without_running(
                ticket_id, from_status=Status.APPROVED, error="approval expired before execution started"
            )
            return ExecutionReport(ticket_id, Status.FAILED, False)
        if not (recovering and ticket.status == Status.EXECUTING):
            return ExecutionReport(ticket_id, ticket.status, False)
    ticket = Ticket.objects.select_related("datasource", "owner", "agent").get(pk=ticket_id)
    url = target_url(ticket.datasource.name, Access.WRITE)
    if recovering:
        entry = ledger_entry(url, str(ticket.execution_key))
        if entry is None and (ticket.approval_valid_until is None or ticket.approval_valid_until <= timezone.now()):
            _finish(
                ticket,
                status=Status.FAILED,
                rowcount=None,
                result=None,
                error="the executor stopped before the statement committed and the approval has since lapsed; "
                "nothing was changed",
                how="recovered after executor loss",
            )
            return ExecutionReport(ticket_id, Status.FAILED, False)
    started = time.monotonic()
    try:
        entry, ran_now = run_once(
            url=url,
            execution_key=str(ticket.execution_key),
            ticket_id=ticket.pk,
            sql=ticket.sql,
            params=ticket.statement_params,
            approved_sha256=ticket.sql_sha256,
            statement_timeout_ms=settings.EXECUTION_STATEMENT_TIMEOUT_MS,
            row_cap=settings.RESULT_ROW_CAP,
            finish=_masked_result_maker(ticket, url),
            before_commit=tags_follow_data(ticket),
        )
    except DigestMismatch as exc:
        _finish(ticket, status=Status.FAILED, rowcount=None, result=None, error=str(exc), how="integrity check")
        return ExecutionReport(ticket_id, Status.FAILED, False)
    except TargetError as exc:
        error = scrub_error(exc.sqlstate, exc.message, touches_phi=True)
        _finish(ticket, status=Status.FAILED, rowcount=None, result=None, error=error, how="target error")
        return ExecutionReport(ticket_id, Status.FAILED, False)
    except Exception:
        # Unknown failure: whether the statement committed is a question for the ledger, not a guess.
        log.exception("execution of ticket %s failed unexpectedly", ticket_id)
        return _settle_from_ledger(ticket, url)
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    _record_success(ticket, entry, ran_now, duration_ms)
    return ExecutionReport(ticket_id, Status.EXECUTED, ran_now)


def _record_success(ticket: Ticket, entry: LedgerEntry, ran_now: bool, duration_ms: float) -> None:
    result = dict(entry.result or {})
    result["duration_ms"] = duration_ms if ran_now else None
    how = "ran" if ran_now else "found committed in the target's ledger (not run again)"
    _finish(ticket, status=Status.EXECUTED, rowcount=entry.rowcount, result=result, error="", how=how)


def _settle_from_ledger(ticket: Ticket, url: str) -> ExecutionReport:
    try:
        entry = ledger_entry(url, str(ticket.execution_key))
    except Exception:
        log.exception("ledger of ticket %s unreadable; left executing for recovery", ticket.pk)
        return ExecutionReport(ticket.pk, Status.EXECUTING, False)
    if entry is not None:
        _record_success(ticket, entry, False, 0.0)
        return ExecutionReport(ticket.pk, Status.EXECUTED, False)
    _finish(
        ticket,
        status=Status.FAILED,
        rowcount=None,
        result=None,
        error="internal error in the executor; the statement did not commit",
        how="internal error",
    )
    return ExecutionReport(ticket.pk, Status.FAILED, False)


def recover_interrupted() -> list[int]:
    """Ticket ids left EXECUTING (an executor died); each gets a recovery run that consults the ledger."""
    return list(Ticket.objects.executing().values_list("pk", flat=True))
