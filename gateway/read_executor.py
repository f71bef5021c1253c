"""Runs allowed reads on the target over the read-only role.

Defence in depth: the role itself has only SELECT (the database refuses writes whatever we send), every read runs
in a ``READ ONLY`` transaction with a statement timeout, and only statements the classifier allowed get here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from psycopg import Connection, pq
from psycopg_pool import ConnectionPool

from gateway import caller
from policy.target_catalog import text_only_adapters

_cursor_names = itertools.count()


@dataclass
class ReadResult:
    columns: list[str] = field(default_factory=list)
    origins: list[tuple[int, int]] = field(default_factory=list)
    type_oids: list[int] = field(default_factory=list)  # per column, as RowDescription reports it
    rows: list[list[str | None]] = field(default_factory=list)
    rowcount: int = 0
    truncated: bool = False
    status: str = ""


def _forget_session_state(conn: Connection) -> None:
    """Every connection returns to the pool as new: no setting, cursor or prepared statement outlives a read."""
    conn.execute("DISCARD ALL")


class ReadExecutor:
    def __init__(self, url: str, *, max_size: int = 8) -> None:
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs={
                "autocommit": True,
                "application_name": "phigate-gateway",
                "context": text_only_adapters(),
                # No automatic server-side prepares: the reset's DISCARD ALL would drop them behind psycopg's back
                # ("prepared statement _pg3_N does not exist" on the next use of the connection).
                "prepare_threshold": None,
            },
            reset=_forget_session_state,
            open=True,
        )

    def close(self) -> None:
        self.pool.close()

    def run(self, sql: str, *, cursor_capable: bool, row_cap: int, timeout_ms: int) -> ReadResult:
        """``cursor_capable``: a plain SELECT, read through a server-side cursor so a huge result stops at the cap.

        For an API request the read is bound by its caller (gateway.caller): no longer than the caller waits, and
        cancelled if the caller goes away."""
        scope = caller.current()
        if scope is not None:
            timeout_ms = scope.statement_timeout_ms(timeout_ms)
        with self.pool.connection() as conn, caller.statement_on(conn), conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
            if cursor_capable:
                return _run_with_cursor(conn, sql, row_cap)
            return _run_plain(conn, sql, row_cap)

    def analysis_error(self, sql: str) -> tuple[str, str, str] | None:
        """PostgreSQL's own verdict on a statement it is only asked to parse and analyse (PQprepare, never run):
        (SQLSTATE, message, position) when it refuses it, such as a column or relation that does not exist; None when
        it accepts it. Analysis reads the catalog, never table data, so the answer depends on no stored value."""
        with self.pool.connection() as conn:
            result = conn.pgconn.prepare(b"", sql.encode())
            if result.status == pq.ExecStatus.COMMAND_OK:
                return None
            sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"XX000").decode()
            message = (result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"statement rejected").decode()
            position = (result.error_field(pq.DiagnosticField.STATEMENT_POSITION) or b"").decode()
            return sqlstate, message, position


def _describe(result: ReadResult, pgresult: object) -> None:
    nfields = pgresult.nfields  # type: ignore[attr-defined]
    result.columns = [(pgresult.fname(i) or b"?").decode() for i in range(nfields)]  # type: ignore[attr-defined]
    result.origins = [(pgresult.ftable(i), pgresult.ftablecol(i)) for i in range(nfields)]  # type: ignore[attr-defined]
    result.type_oids = [pgresult.ftype(i) for i in range(nfields)]  # type: ignore[attr-defined]


def _run_with_cursor(conn: Connection, sql: str, row_cap: int) -> ReadResult:
    result = ReadResult()
    with conn.cursor(name=f"phigate_read_{next(_cursor_names)}") as cursor:
        cursor.execute(sql)
        if cursor.pgresult is not None:
            _describe(result, cursor.pgresult)
        rows = cursor.fetchmany(row_cap + 1)
    result.truncated = len(rows) > row_cap
    result.rows = [list(row) for row in rows[:row_cap]]
    result.rowcount = len(result.rows)
    result.status = f"SELECT {result.rowcount}"
    return result


def _run_plain(conn: Connection, sql: str, row_cap: int) -> ReadResult:
    result = ReadResult()
    cursor = conn.execute(sql)
    if cursor.pgresult is not None and cursor.description is not None:
        _describe(result, cursor.pgresult)
        rows = cursor.fetchall()
        result.truncated = len(rows) > row_cap
        result.rows = [list(row) for row in rows[:row_cap]]
        result.rowcount = len(result.rows)
    else:
        result.rowcount = max(cursor.rowcount, 0)
    result.status = cursor.statusmessage or ""
    return result
