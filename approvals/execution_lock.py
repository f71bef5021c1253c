"""The lock an executor holds on the control plane while it works on a ticket: liveness without a clock.

A session-level advisory lock on a connection of its own, taken before the claim and let go after the ticket's
final transition has committed. PostgreSQL lets go of it when that session ends, which is when the executor's
process dies (the kernel closes its socket; the idle backend reads end-of-file at once) or its connection is cut
(TCP keepalives on both ends bound how long a silent peer keeps it). So for a ticket that is APPROVED or
EXECUTING: lock held, an executor is working on it and everyone else leaves it alone; lock free, none is, and
whoever takes the lock may settle it (approvals.execution). Nothing here reads a clock.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

import psycopg
from django.db import connection

# Two-key advisory locks (class, ticket): apart from Slack's per-ticket class (0x51AC) and the audit sequencer's
# single-key lock. The second key is an int4: tickets past 2**31 share a lock with an older one, which can make
# one wait for the other, never decide wrongly.
LOCK_CLASS = 0x6578


def lock_key(ticket_id: int) -> int:
    return ticket_id & 0x7FFFFFFF


def _session(application_name: str) -> psycopg.Connection[Any]:
    """A control-plane session of its own (Django's connection is closed between tasks, this one must not be)."""
    params = dict(connection.get_connection_params())
    params.setdefault("application_name", application_name)
    # libpq's keepalives notice a dead control plane; the server's (below) notice a dead executor host.
    params.update(autocommit=True, keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
    session = psycopg.connect(**params)
    for setting in ("tcp_keepalives_idle = 10", "tcp_keepalives_interval = 5", "tcp_keepalives_count = 3"):
        session.execute(f"SET {setting}".encode())
    # A site-wide idle timeout would end this idle session, and with it the lock, under a running statement.
    session.execute(b"SET idle_session_timeout = 0")
    return session


class ExecutorLock:
    """``with ExecutorLock(ticket_id) as lock:`` then ``lock.acquired``; held until the block ends."""

    def __init__(self, ticket_id: int) -> None:
        self.ticket_id = ticket_id
        self.acquired = False
        self._session: psycopg.Connection[Any] | None = None

    def __enter__(self) -> ExecutorLock:
        self._session = _session(f"phigate-executor pid {os.getpid()} ticket {self.ticket_id}")
        try:
            row = self._session.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, lock_key(self.ticket_id))
            ).fetchone()
        except BaseException:
            self._session.close()
            raise
        self.acquired = bool(row and row[0])
        return self

    def still_held(self) -> bool:
        """True while the session that took the lock is alive (a new session would not hold it)."""
        if not self.acquired or self._session is None:
            return False
        try:
            self._session.execute(b"SELECT 1")
        except psycopg.Error:
            return False
        return True

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._session is not None:
            self._session.close()  # ending the session lets go of the lock
            self._session = None
        self.acquired = False


def tickets_with_live_executor(ticket_ids: list[int]) -> set[int]:
    """Which of these tickets an executor is working on right now (its lock is held), read from pg_locks."""
    if not ticket_ids:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objsubid = 2 "
            "AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [LOCK_CLASS],
        )
        held = {int(row[0]) for row in cursor.fetchall()}
    return {ticket_id for ticket_id in ticket_ids if lock_key(ticket_id) in held}
