"""The execution ledger lives in the *target* database, next to the data the statement changes.

The executor inserts a ticket's row in the same transaction as the approved statement, so the statement's
effects and the record that it ran commit together. A retry (redelivery, crash recovery, a second worker) finds
the row and does not run the statement again; a crash before commit leaves neither. The read-only role has no
access to it at all.

Each key gets exactly one committed row, and that row is the truth about the ticket on the target:

- **ran**: ``rowcount`` is set (the statement committed with it);
- **fenced**: ``rowcount`` is NULL and ``result`` says why (``{"not_run": ..., "sqlstate": ...}``). The statement
  did not commit, and never can: the row is committed in its stead, so any executor that comes later (a
  redelivery, a recovery, an executor that lost its control-plane lock and kept going) finds it and stops.

Whoever inserts the key holds it until its transaction ends, so a second executor's INSERT waits for the first
one's outcome (commit: a row to read; rollback, or a dead session's backend ending: the key is free again).
"Nothing was changed" is only ever said with a fence committed, or before any executor touched the target.
"""

from __future__ import annotations

from enum import StrEnum

LEDGER_SCHEMA = "phigate"
LEDGER_TABLE = f"{LEDGER_SCHEMA}.execution_ledger"


class NotRun(StrEnum):
    """Why a fence was committed instead of the statement (the ``not_run`` of a fenced row)."""

    APPROVAL_LAPSED = "approval_lapsed"
    DIGEST_MISMATCH = "digest_mismatch"
    CLIENT_COPY = "client_copy"
    TRANSACTION_CONTROL = "transaction_control"
    STATEMENT_FAILED = "statement_failed"
    EXECUTOR_ERROR = "executor_error"


def ledger_ddl(write_role: str, read_role: str) -> list[str]:
    """Statements (run by the target owner) that create the ledger and grant the executor what it needs."""
    from psycopg import sql

    writer = sql.Identifier(write_role).as_string(None)
    reader = sql.Identifier(read_role).as_string(None)
    return [
        f"CREATE SCHEMA IF NOT EXISTS {LEDGER_SCHEMA}",
        f"""CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
            execution_key uuid PRIMARY KEY,
            ticket_id bigint NOT NULL,
            sql_sha256 char(64) NOT NULL,
            executed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            rowcount bigint,
            result jsonb
        )""",
        f"REVOKE ALL ON SCHEMA {LEDGER_SCHEMA} FROM PUBLIC",
        f"REVOKE ALL ON {LEDGER_TABLE} FROM PUBLIC",
        f"REVOKE ALL ON {LEDGER_TABLE} FROM {reader}",
        f"GRANT USAGE ON SCHEMA {LEDGER_SCHEMA} TO {writer}",
        # INSERT and UPDATE (of its own new row, same transaction) and SELECT; never DELETE: the ledger only grows.
        f"GRANT SELECT, INSERT, UPDATE ON {LEDGER_TABLE} TO {writer}",
    ]


CLAIM_SQL = (
    f"INSERT INTO {LEDGER_TABLE} (execution_key, ticket_id, sql_sha256) VALUES ($1, $2, $3) "
    "ON CONFLICT (execution_key) DO NOTHING"
).encode()
READ_SQL = f"SELECT rowcount, result::text FROM {LEDGER_TABLE} WHERE execution_key = $1".encode()
COMPLETE_SQL = f"UPDATE {LEDGER_TABLE} SET rowcount = $2, result = $3::jsonb WHERE execution_key = $1".encode()
# rowcount stays NULL: the mark of a fence.
FENCE_SQL = f"UPDATE {LEDGER_TABLE} SET result = $2::jsonb WHERE execution_key = $1".encode()
