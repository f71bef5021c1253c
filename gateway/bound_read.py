"""Reads with bind parameters on the read-only role: the ticket page's look-ups of a parameterised statement.

A held wire statement's text has placeholders (``WHERE id = $2``); its values are bind parameters, some of them
in binary format. They are sent exactly as the client sent them (PQexecParams with their bytes, formats and
types), never pasted into the text, so nothing in a value can change the statement, and EXPLAIN plans with the
real values (PostgreSQL plans an unnamed statement's parameters as constants). Like every read here: the
read-only role, a READ ONLY transaction, the read statement timeout, and rows as PostgreSQL's text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from psycopg import pq
from psycopg.pq.abc import PGresult

from approvals.params import StatementParams
from gateway.read_executor import ReadExecutor


@dataclass(frozen=True)
class BoundParams:
    """Values, formats and the types to declare: the declared ones, or what PostgreSQL resolved for those the
    client left undeclared (a composed read may leave a parameter unused, and PostgreSQL can infer no type for
    an unused one)."""

    values: tuple[bytes | None, ...]
    formats: tuple[int, ...]
    types: tuple[int, ...]

    @classmethod
    def of(cls, params: StatementParams | None, resolved: Sequence[dict[str, object]] | None) -> BoundParams:
        if params is None:
            return cls((), (), ())
        types = []
        for index, declared in enumerate(params.type_oids):
            known = resolved[index] if resolved is not None and index < len(resolved) else None
            types.append(declared or (int(str(known["oid"])) if known else 0))
        return cls(params.values, params.formats, tuple(types))


class BoundReadFailed(Exception):
    """PostgreSQL refused or failed the read; nothing was returned."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate
        self.message = message


@dataclass
class BoundResult:
    columns: list[str] = field(default_factory=list)
    origins: list[tuple[int, int]] = field(default_factory=list)
    rows: list[list[str | None]] = field(default_factory=list)
    truncated: bool = False


def run_bound(executor: ReadExecutor, sql: str, params: BoundParams, *, row_cap: int, timeout_ms: int) -> BoundResult:
    """Run one read with ``params`` bound; at most ``row_cap`` rows are kept (``truncated`` says more came)."""
    with executor.pool.connection() as conn, conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        result = conn.pgconn.exec_params(
            sql.encode("utf-8"),
            list(params.values),
            param_types=list(params.types) or None,
            param_formats=list(params.formats) or None,
            result_format=0,
        )
        if result.status != pq.ExecStatus.TUPLES_OK:
            raise _failure(result)
        return _rows(result, row_cap)


def _failure(result: PGresult) -> BoundReadFailed:
    sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"XX000").decode()
    message = (result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"read failed").decode("utf-8", "replace")
    return BoundReadFailed(sqlstate, message)


def _rows(result: PGresult, row_cap: int) -> BoundResult:
    out = BoundResult(
        columns=[(result.fname(i) or b"?").decode("utf-8", "replace") for i in range(result.nfields)],
        origins=[(result.ftable(i), result.ftablecol(i)) for i in range(result.nfields)],
    )
    for row in range(min(result.ntuples, row_cap)):
        out.rows.append([_text(result.get_value(row, column)) for column in range(result.nfields)])
    out.truncated = result.ntuples > row_cap
    return out


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")
