"""What a rogue superuser can do to the control-plane database, for the tamper-evidence tests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from tests import environment


@contextmanager
def superuser() -> Iterator[psycopg.Connection]:
    with psycopg.connect(environment.db_url(environment.CONTROL_DB), autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # triggers off: what only a superuser can do
        yield conn


def saved(conn: psycopg.Connection, table: str, where: str, params: list[object]) -> str:
    name = f"saved_{table}"
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM {table} WHERE {where}", params)
    return name


def put_back(conn: psycopg.Connection, table: str, copy: str) -> None:
    """Re-insert saved rows as they were (generated columns are recomputed by the database)."""
    columns = [
        row[0]
        for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND is_generated = 'NEVER' "
            "ORDER BY ordinal_position",
            [table],
        )
    ]
    listed = ", ".join(columns)
    conn.execute(f"INSERT INTO {table} ({listed}) SELECT {listed} FROM {copy}")


def swap_links(conn: psycopg.Connection, first: int, second: int) -> None:
    """Exchange the chain positions of two links (its own inverse). Through a free range of positions, because
    the primary key is checked row by row."""
    offset = 10**12
    conn.execute("UPDATE audit_chainlink SET seq = seq + %s WHERE seq IN (%s, %s)", [offset, first, second])
    conn.execute(
        "UPDATE audit_chainlink SET seq = CASE seq WHEN %s THEN %s ELSE %s END WHERE seq IN (%s, %s)",
        [first + offset, second, first, first + offset, second + offset],
    )


def chain_until_linked(events: Sequence[Any], timeout: float = 30.0) -> None:
    """Extend the chain until every one of ``events`` is linked.

    The sequencer links an event at the first pass that sees it committed, so an event whose transaction was
    still finishing during a pass waits for the next one; tampering with an unlinked event would test nothing.
    """
    from audit.chain import extend_chain
    from audit.models import ChainLink
    from tests.services import wait_until

    ids = {event.pk for event in events}

    def linked() -> bool:
        extend_chain()
        return ChainLink.objects.filter(event_id__in=ids).count() == len(ids)

    wait_until(linked, timeout, interval=0.2, what="fresh audit events to be chained")
