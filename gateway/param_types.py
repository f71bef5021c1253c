"""What PostgreSQL makes of a held statement's parameter types, asked without running anything.

A wire client may leave a parameter's type to the server (type 0: psycopg does for ``str``), and a declared type
may be one that is not built in (an enum, a domain). Reviewers see each parameter with its type, so when a
parameterised statement is held the gateway asks the target to analyse it (PQprepare of the unnamed statement,
then PQdescribePrepared, over the read-only role) and names the types with ``format_type``. Analysis reads the
catalog, never table data, and nothing is executed; the prepared statement does not outlive the pooled
connection's reset. The declared types are what runs and what the digest covers; these are for display, and for
planning the ticket's look-ups (gateway.ticket_lookups), where an unused parameter needs a known type.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from psycopg import pq

from gateway.read_executor import ReadExecutor

log = logging.getLogger(__name__)


def resolved_parameter_types(
    executor: ReadExecutor, sql: str, declared: Sequence[int]
) -> list[dict[str, object]] | None:
    """``[{"oid": n, "name": "bigint"}, ...]`` per parameter, or None when PostgreSQL cannot analyse the
    statement on the read role (the ticket then shows the declared types only)."""
    try:
        with executor.pool.connection() as conn:
            pgconn = conn.pgconn
            prepared = pgconn.prepare(b"", sql.encode("utf-8"), list(declared) or None)
            if prepared.status != pq.ExecStatus.COMMAND_OK:
                return None
            described = pgconn.describe_prepared(b"")
            if described.status != pq.ExecStatus.COMMAND_OK or described.nparams != len(declared):
                return None
            oids = [described.param_type(i) for i in range(described.nparams)]
            names = pgconn.exec_params(
                b"SELECT format_type(t.oid, NULL) FROM unnest($1::oid[]) WITH ORDINALITY AS t(oid, n) ORDER BY t.n",
                [("{" + ",".join(str(oid) for oid in oids) + "}").encode()],
            )
            if names.status != pq.ExecStatus.TUPLES_OK or names.ntuples != len(oids):
                return None
            return [
                {"oid": oid, "name": (names.get_value(i, 0) or b"").decode("utf-8", "replace")}
                for i, oid in enumerate(oids)
            ]
    except Exception:  # display only: a failure here must never stop a ticket from being opened
        log.warning("could not resolve the parameter types of a held statement", exc_info=True)
        return None
