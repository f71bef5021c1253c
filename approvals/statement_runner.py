"""Runs one approved statement on the target, inside the ledger transaction, at the libpq level.

Why libpq directly: the bytes sent must be exactly the approved bytes (non-negotiable 5). The driver's query
formatting layer is bypassed: the statement goes out with PQsendQuery as UTF-8 bytes whose SHA-256 is checked
right before sending. Single-row mode keeps memory bounded for large results while still counting every row.

Every decision about a key ends in one committed ledger row (approvals.ledger): the statement's, or a fence
saying why it did not run. What decides "not run" (the digest, a statement the executor cannot run inside its
own transaction, the end of the approval, the statement's own error) is decided while this session holds the
key, and the fence commits in that same transaction, so no executor can run the statement after another one
said it would not. The statement runs inside a savepoint for that reason: its error rolls back to the savepoint
and the fence commits in its place. When the outcome is not this session's to know (the session died, the
executor's own code failed), ``settle`` takes the key in a new session, waiting for any holder, and reads the
committed row or commits a fence.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import pglast
import psycopg
from django.utils import timezone
from pglast import ast
from psycopg import pq
from psycopg.conninfo import make_conninfo
from psycopg.pq.abc import PGconn, PGresult

from approvals.ledger import CLAIM_SQL, COMPLETE_SQL, FENCE_SQL, READ_SQL, NotRun
from approvals.params import StatementParams, statement_digest


class TargetError(Exception):
    """The target refused or failed the statement; nothing was committed."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate
        self.message = message


class TargetUnreachable(TargetError):
    """No session could be opened: nothing was sent to the target."""


class OutcomeUnknown(Exception):
    """The session was lost after the key was taken; only the ledger can say what happened (``settle``)."""


class LockLost(Exception):
    """The executor no longer holds its control-plane lock, so it stops before the statement (key left free)."""


@dataclass
class RawResult:
    """The last result set with columns (if any), unmasked, plus the total affected/returned row count."""

    rowcount: int = 0
    columns: list[str] = field(default_factory=list)
    origins: list[tuple[int, int]] = field(default_factory=list)
    type_oids: list[int] = field(default_factory=list)  # per column, for typed JSON (policy.result_values)
    rows: list[list[str | None]] = field(default_factory=list)
    truncated: bool = False
    command_tag: str = ""


@dataclass(frozen=True)
class LedgerEntry:
    """A committed ledger row. ``rowcount`` None is a fence: the statement did not commit and never will."""

    rowcount: int | None
    result: dict[str, object] | None

    @property
    def ran(self) -> bool:
        return self.rowcount is not None

    @property
    def not_run(self) -> NotRun | None:
        if self.ran:
            return None
        try:
            return NotRun(str((self.result or {}).get("not_run", "")))
        except ValueError:
            return NotRun.EXECUTOR_ERROR  # a reason this version does not know: still a fence

    @property
    def sqlstate(self) -> str:
        return str((self.result or {}).get("sqlstate") or "")


@dataclass(frozen=True)
class Outcome:
    """What the ledger now says, whether this call ran the statement, and its error if it failed here."""

    entry: LedgerEntry
    ran_now: bool
    error: TargetError | None = None


def connect(url: str, application_name: str) -> PGconn:
    conninfo = make_conninfo(url, client_encoding="UTF8", application_name=application_name)
    pgconn = pq.PGconn.connect(conninfo.encode())
    if pgconn.status != pq.ConnStatus.OK:
        message = str(pgconn.get_error_message()).strip()
        pgconn.finish()
        raise TargetUnreachable("08001", f"cannot connect to the target: {message}")
    return pgconn


def _error(result: PGresult) -> TargetError:
    sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"XX000").decode()
    message = (result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode("utf-8", "replace")
    return TargetError(sqlstate, message)


def _command(pgconn: PGconn, sql: bytes, params: list[bytes | None] | None = None) -> PGresult:
    result = pgconn.exec_(sql) if params is None else pgconn.exec_params(sql, params)
    if result.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
        if pgconn.status != pq.ConnStatus.OK:
            raise OutcomeUnknown(f"target session lost: {_error(result)}")
        raise _error(result)
    return result


def _run_statement(pgconn: PGconn, sql: bytes, row_cap: int, params: StatementParams | None = None) -> RawResult:
    try:
        if params is None:
            pgconn.send_query(sql)
        else:
            pgconn.send_query_params(
                sql, list(params.values), param_types=list(params.type_oids), param_formats=list(params.formats)
            )
    except psycopg.OperationalError as exc:
        raise TargetError("08006", str(exc)) from None
    pgconn.set_single_row_mode()
    out = RawResult()
    failure: TargetError | None = None
    in_result_set = False
    while (result := pgconn.get_result()) is not None:
        status = result.status
        if status == pq.ExecStatus.SINGLE_TUPLE:
            if not in_result_set:  # first row of a new result set: it replaces the previous one
                in_result_set = True
                out.columns = [(result.fname(i) or b"?").decode() for i in range(result.nfields)]
                out.origins = [(result.ftable(i), result.ftablecol(i)) for i in range(result.nfields)]
                out.type_oids = [result.ftype(i) for i in range(result.nfields)]
                out.rows, out.truncated = [], False
            out.rowcount += 1
            if len(out.rows) < row_cap:
                out.rows.append([_text(result.get_value(0, i)) for i in range(result.nfields)])
            else:
                out.truncated = True
        elif status == pq.ExecStatus.TUPLES_OK:
            if not in_result_set:  # an empty result set still defines the columns
                out.columns = [(result.fname(i) or b"?").decode() for i in range(result.nfields)]
                out.origins = [(result.ftable(i), result.ftablecol(i)) for i in range(result.nfields)]
                out.type_oids = [result.ftype(i) for i in range(result.nfields)]
                out.rows, out.truncated = [], False
            in_result_set = False
            out.command_tag = (result.command_status or b"").decode()
        elif status == pq.ExecStatus.COMMAND_OK:
            in_result_set = False
            tuples = result.command_tuples
            out.rowcount += int(tuples) if tuples is not None else 0
            out.command_tag = (result.command_status or b"").decode()
        elif status in (pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_BOTH):
            # libpq answers COPY_* again on every call until the copy ends: end it here, or this loop never does.
            _end_copy(pgconn, status)
            failure = failure or TargetError("0A000", _COPY_REFUSAL)
        elif status == pq.ExecStatus.FATAL_ERROR and failure is None:
            failure = _error(result)
        if pgconn.status != pq.ConnStatus.OK:
            failure = failure or TargetError("08006", "connection to the target lost")
            break
    if failure is not None:
        raise failure
    return out


def _end_copy(pgconn: PGconn, status: int) -> None:
    """End a copy the executor has no client for: refuse COPY FROM STDIN, cancel and drain COPY TO STDOUT."""
    if status in (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_BOTH):
        pgconn.put_copy_end(_COPY_REFUSAL.encode())  # the server fails the statement with this message
    if status in (pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH):
        pgconn.get_cancel().cancel()
        try:
            while pgconn.get_copy_data(0)[0] >= 0:  # blocking reads; -1 once the copy is over
                pass
        except psycopg.OperationalError:
            pass  # the session is gone; the caller sees it in pgconn.status


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


_COPY_REFUSAL = "COPY to or from the client cannot run in the executor: it has no client to stream rows to or from"


def executor_refusal(sql: str) -> NotRun | None:
    """Statements the executor cannot run inside its ledger transaction, whatever was approved.

    COPY FROM STDIN / TO STDOUT needs the client that asked, which the executor is not. Transaction control
    (COMMIT, ROLLBACK, SAVEPOINT, ...) would end or cut the ledger's own transaction, so the statement could no
    longer commit together with its ledger row. Text that does not parse is left to PostgreSQL to refuse.
    """
    try:
        statements = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return None
    for raw in statements:
        node = raw.stmt
        if isinstance(node, ast.CopyStmt) and node.filename is None and not node.is_program:
            return NotRun.CLIENT_COPY
        if isinstance(node, ast.TransactionStmt):
            return NotRun.TRANSACTION_CONTROL
    return None


def run_once(
    *,
    url: str,
    execution_key: str,
    ticket_id: int,
    sql: str,
    params: StatementParams | None = None,
    approved_sha256: str,
    statement_timeout_ms: int,
    row_cap: int,
    finish: Callable[[RawResult], dict[str, object]],
    before_commit: Callable[[psycopg.Connection], None] | None = None,
    valid_until: datetime | None = None,
    still_held: Callable[[], bool] | None = None,
) -> Outcome:
    """Run ``sql`` unless the ledger already decided this key; every return is a committed ledger row.

    ``finish`` turns the raw result into the stored (masked) form before commit, so the ledger row written in the
    statement's own transaction already holds what the requester may see.

    ``before_commit`` runs after the statement, inside its transaction, on the same session (it sees what the
    statement created): the PHI tags of the relations it filled are made durable there, before the COMMIT
    (approvals.tags_follow_data). If it (or ``finish``) raises, nothing commits and the exception propagates.

    ``valid_until`` is the end of the approval, checked once this session holds the key and right before the
    bytes are sent (taking the key may have waited for another session's outcome). ``still_held`` asks whether
    the caller still holds its control-plane lock; if not, nothing is sent (``LockLost``).

    Raises ``TargetUnreachable`` (nothing sent), ``LockLost`` (key released, nothing sent), ``OutcomeUnknown``
    (the session died after taking the key) and whatever ``finish`` or ``before_commit`` raised (rolled back):
    after the last two, ``settle`` says what the ledger holds.
    """
    payload = sql.encode("utf-8")
    pgconn = connect(url, "phigate-executor")
    session: psycopg.Connection | None = None  # kept until pgconn.finish(), so it is never dropped while open
    key = execution_key.encode()
    try:
        # An orphaned backend (executor killed mid-statement) notices the dead socket within a second and rolls back.
        _command(pgconn, b"SET client_connection_check_interval = '1s'")
        _command(pgconn, b"BEGIN ISOLATION LEVEL READ COMMITTED")
        _command(pgconn, f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}".encode())
        # Blocks while another session holds this key uncommitted, then sees its outcome.
        claim = _command(pgconn, CLAIM_SQL, [key, str(ticket_id).encode(), approved_sha256.encode()])
        if claim.command_tuples == 0:
            _command(pgconn, b"ROLLBACK")
            return Outcome(read_ledger(pgconn, execution_key), ran_now=False)
        if still_held is not None and not still_held():
            _command(pgconn, b"ROLLBACK")
            raise LockLost(f"ticket {ticket_id}: control-plane lock lost before the statement; nothing sent")
        reason = _why_not(sql, params, approved_sha256, valid_until)
        if reason is not None:
            return Outcome(_fence_and_commit(pgconn, execution_key, reason), ran_now=False)
        _command(pgconn, b"SAVEPOINT phigate_approved_statement")
        try:
            raw = _run_statement(pgconn, payload, row_cap, params)
            stored = finish(raw)
            if before_commit is not None:
                session = psycopg.Connection(pgconn)
                before_commit(session)
        except TargetError as failure:
            if pgconn.status != pq.ConnStatus.OK:
                raise OutcomeUnknown(f"target session lost during the statement: {failure}") from None
            _command(pgconn, b"ROLLBACK TO SAVEPOINT phigate_approved_statement")
            entry = _fence_and_commit(pgconn, execution_key, NotRun.STATEMENT_FAILED, failure.sqlstate)
            return Outcome(entry, ran_now=False, error=failure)
        except Exception:
            # Our own failure (masking, the tags' control-plane commit): nothing commits here, and the caller
            # settles the key with a fence of its own (``settle``), which also sees any other session's outcome.
            if pgconn.status == pq.ConnStatus.OK:
                pgconn.exec_(b"ROLLBACK")
            raise
        _command(pgconn, COMPLETE_SQL, [key, str(raw.rowcount).encode(), json.dumps(stored).encode()])
        commit = pgconn.exec_(b"COMMIT")
        if commit.status == pq.ExecStatus.COMMAND_OK:
            return Outcome(LedgerEntry(rowcount=raw.rowcount, result=stored), ran_now=True)
        if pgconn.status != pq.ConnStatus.OK:
            raise OutcomeUnknown("target session lost at COMMIT")
        # The server refused the COMMIT (a deferred constraint, a serialization failure): all of it rolled back,
        # the key included, so the fence goes in a transaction of its own.
        error = _error(commit)
        return Outcome(
            _settle_on(pgconn, execution_key, ticket_id, approved_sha256, NotRun.STATEMENT_FAILED, error.sqlstate),
            ran_now=False,
            error=error,
        )
    finally:
        pgconn.finish()


def _why_not(
    sql: str, params: StatementParams | None, approved_sha256: str, valid_until: datetime | None
) -> NotRun | None:
    if statement_digest(sql, params) != approved_sha256:
        return NotRun.DIGEST_MISMATCH
    if (refusal := executor_refusal(sql)) is not None:
        return refusal
    if valid_until is not None and timezone.now() >= valid_until:
        return NotRun.APPROVAL_LAPSED
    return None


def _fence_and_commit(pgconn: PGconn, execution_key: str, reason: NotRun, sqlstate: str = "") -> LedgerEntry:
    """Inside the transaction that holds the key: commit the fence in place of the statement."""
    stored: dict[str, object] = {"not_run": str(reason)}
    if sqlstate:
        stored["sqlstate"] = sqlstate
    _command(pgconn, FENCE_SQL, [execution_key.encode(), json.dumps(stored).encode()])
    _command(pgconn, b"COMMIT")
    return LedgerEntry(rowcount=None, result=stored)


def _settle_on(
    pgconn: PGconn, execution_key: str, ticket_id: int, approved_sha256: str, reason: NotRun, sqlstate: str = ""
) -> LedgerEntry:
    _command(pgconn, b"BEGIN ISOLATION LEVEL READ COMMITTED")
    claim = _command(pgconn, CLAIM_SQL, [execution_key.encode(), str(ticket_id).encode(), approved_sha256.encode()])
    if claim.command_tuples == 0:
        _command(pgconn, b"ROLLBACK")
        return read_ledger(pgconn, execution_key)
    return _fence_and_commit(pgconn, execution_key, reason, sqlstate)


def settle(
    url: str, execution_key: str, ticket_id: int, approved_sha256: str, reason: NotRun, *, lock_timeout_ms: int
) -> LedgerEntry:
    """Make the ledger decide without running anything: the committed row if there is one, else a new fence.

    Taking the key waits for any session that holds it (an orphaned backend rolling back, a COMMIT in flight),
    so the answer is the truth, never a guess. ``lock_timeout_ms`` bounds that wait; past it this raises
    ``TargetError`` (55P03) and the ticket stays undecided for a later attempt.
    """
    pgconn = connect(url, "phigate-executor")
    try:
        _command(pgconn, f"SET lock_timeout = {int(lock_timeout_ms)}".encode())
        return _settle_on(pgconn, execution_key, ticket_id, approved_sha256, reason)
    finally:
        pgconn.finish()


def read_ledger(pgconn: PGconn, execution_key: str) -> LedgerEntry:
    result = _command(pgconn, READ_SQL, [execution_key.encode()])
    if result.ntuples == 0:
        raise TargetError("XX000", "ledger row vanished")
    rowcount = result.get_value(0, 0)
    stored = result.get_value(0, 1)
    return LedgerEntry(
        rowcount=int(rowcount) if rowcount is not None else None,
        result=json.loads(stored) if stored is not None else None,
    )


def ledger_entry(url: str, execution_key: str) -> LedgerEntry | None:
    """The committed ledger entry for a key, or None if none has committed (yet: this does not wait)."""
    pgconn = connect(url, "phigate-executor")
    try:
        result = _command(pgconn, READ_SQL, [execution_key.encode()])
        if result.ntuples == 0:
            return None
        return read_ledger(pgconn, execution_key)
    finally:
        pgconn.finish()
