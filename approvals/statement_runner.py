"""Runs one approved statement on the target, inside the ledger transaction, at the libpq level.

Why libpq directly: the bytes sent must be exactly the approved bytes (non-negotiable 5). The driver's query
formatting layer is bypassed: the statement goes out with PQsendQuery as UTF-8 bytes whose SHA-256 is checked
right before sending. Single-row mode keeps memory bounded for large results while still counting every row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo
from psycopg.pq.abc import PGconn, PGresult

from approvals.ledger import CLAIM_SQL, COMPLETE_SQL, READ_SQL
from approvals.params import StatementParams, statement_digest


class TargetError(Exception):
    """The target refused or failed the statement; nothing was committed."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate
        self.message = message


class DigestMismatch(Exception):
    """The statement about to be sent is not the one that was approved."""


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
    rowcount: int
    result: dict[str, object] | None


def connect(url: str, application_name: str) -> PGconn:
    conninfo = make_conninfo(url, client_encoding="UTF8", application_name=application_name)
    pgconn = pq.PGconn.connect(conninfo.encode())
    if pgconn.status != pq.ConnStatus.OK:
        message = str(pgconn.get_error_message()).strip()
        pgconn.finish()
        raise TargetError("08001", f"cannot connect to the target: {message}")
    return pgconn


def _error(result: PGresult) -> TargetError:
    sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"XX000").decode()
    message = (result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode("utf-8", "replace")
    return TargetError(sqlstate, message)


def _command(pgconn: PGconn, sql: bytes, params: list[bytes | None] | None = None) -> PGresult:
    result = pgconn.exec_(sql) if params is None else pgconn.exec_params(sql, params)
    if result.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
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
        elif status == pq.ExecStatus.FATAL_ERROR and failure is None:
            failure = _error(result)
    if failure is not None:
        raise failure
    return out


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


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
) -> tuple[LedgerEntry, bool]:
    """Run ``sql`` unless the ledger says it already ran. Returns (ledger entry, ran_now).

    ``finish`` turns the raw result into the stored (masked) form before commit, so the ledger row written in the
    statement's own transaction already holds what the requester may see.

    ``before_commit`` runs after the statement, inside its transaction, on the same session (it sees what the
    statement created): the PHI tags of the relations it filled are made durable there, before the COMMIT
    (approvals.tags_follow_data). If it raises, nothing commits.
    """
    payload = sql.encode("utf-8")
    pgconn = connect(url, "phigate-executor")
    session: psycopg.Connection | None = None  # kept until pgconn.finish(), so it is never dropped while open
    try:
        # An orphaned backend (executor killed mid-statement) notices the dead socket within a second and rolls back.
        _command(pgconn, b"SET client_connection_check_interval = '1s'")
        _command(pgconn, b"BEGIN ISOLATION LEVEL READ COMMITTED")
        _command(pgconn, f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}".encode())
        # Blocks while another executor holds an uncommitted claim for this key, then sees its outcome.
        claim = _command(pgconn, CLAIM_SQL, [execution_key.encode(), str(ticket_id).encode(), approved_sha256.encode()])
        if claim.command_tuples == 0:
            _command(pgconn, b"ROLLBACK")
            return read_ledger(pgconn, execution_key), False
        if statement_digest(sql, params) != approved_sha256:
            _command(pgconn, b"ROLLBACK")
            raise DigestMismatch("statement bytes differ from the approved digest; refusing to run")
        try:
            raw = _run_statement(pgconn, payload, row_cap, params)
        except TargetError:
            pgconn.exec_(b"ROLLBACK")
            raise
        stored = finish(raw)
        if before_commit is not None:
            session = psycopg.Connection(pgconn)
            before_commit(session)
        _command(
            pgconn, COMPLETE_SQL, [execution_key.encode(), str(raw.rowcount).encode(), json.dumps(stored).encode()]
        )
        _command(pgconn, b"COMMIT")
        return LedgerEntry(rowcount=raw.rowcount, result=stored), True
    finally:
        pgconn.finish()


def read_ledger(pgconn: PGconn, execution_key: str) -> LedgerEntry:
    result = _command(pgconn, READ_SQL, [execution_key.encode()])
    if result.ntuples == 0:
        raise TargetError("XX000", "ledger row vanished")
    rowcount = result.get_value(0, 0)
    stored = result.get_value(0, 1)
    return LedgerEntry(
        rowcount=int(rowcount) if rowcount is not None else 0,
        result=json.loads(stored) if stored is not None else None,
    )


def ledger_entry(url: str, execution_key: str) -> LedgerEntry | None:
    """The committed ledger entry for a key, or None if the statement never committed."""
    pgconn = connect(url, "phigate-executor")
    try:
        result = _command(pgconn, READ_SQL, [execution_key.encode()])
        if result.ntuples == 0:
            return None
        return read_ledger(pgconn, execution_key)
    finally:
        pgconn.finish()
