"""Group commit for audit events written on a hot path (the wire gateway).

The wire gateway's audit path when no local journal is configured (``AUDIT_JOURNAL_DIR``; see audit.journal).
A few writer threads, one connection each: every event submitted while a batch was committing goes into a
next batch, one INSERT (or a COPY when large) in its own implicit transaction. Events travel as COPY text lines
(audit.journal_format.copy_line, in audit.events.COLUMNS order), the same form the journal stores. A caller gets a
future that completes only after *its* event is durable, so "no result before its audit record" still holds
per statement, while the commit cost is shared by everyone in the batch. If a batch fails, its events are
retried one by one; an event that still fails fails its future, and that caller withholds its result.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import psycopg
from django.conf import settings
from psycopg.conninfo import make_conninfo

from audit.events import COLUMNS
from audit.journal_format import copy_fields, copy_line
from phigate import envconfig

log = logging.getLogger(__name__)

MAX_BATCH = 1000
AUDIT_WRITERS = envconfig.get_int("AUDIT_WRITERS", 1, minimum=1, maximum=32)
DEFER_SECONDS = 0.05
COPY_FROM = 64  # a batch this large goes as COPY
_NOTHING = object()
COPY_SQL = f"COPY audit_auditevent ({', '.join(COLUMNS)}) FROM STDIN"


@functools.cache
def insert_sql(rows: int) -> bytes:
    """A multi-row INSERT with ``$n`` placeholders, values given in PostgreSQL's text form."""
    width = len(COLUMNS)
    groups = ("(" + ", ".join(f"${row * width + column + 1}" for column in range(width)) + ")" for row in range(rows))
    return (f"INSERT INTO audit_auditevent ({', '.join(COLUMNS)}) VALUES " + ", ".join(groups)).encode()


def control_plane_conninfo() -> str:
    database: dict[str, Any] = dict(settings.DATABASES["default"])
    options: dict[str, Any] = dict(database.get("OPTIONS") or {})
    return make_conninfo(
        dbname=database["NAME"],
        user=database["USER"] or None,
        password=database["PASSWORD"] or None,
        host=database["HOST"] or None,
        port=database["PORT"] or None,
        application_name="phigate-audit-writer",
        **options,
    )


class AuditBatchWriter:
    def __init__(self, conninfo: str | None = None, max_batch: int = MAX_BATCH, writers: int | None = None) -> None:
        self._conninfo = conninfo or control_plane_conninfo()
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[bytes, Future[None]] | None] = queue.SimpleQueue()
        self._deferred: list[tuple[bytes, Future[None]]] = []
        self._deferred_lock = threading.Lock()
        # Several connections commit concurrently, and PostgreSQL flushes their WAL together (group commit):
        # a statement waits for one commit, not for the one before it to finish first.
        self._threads = [
            threading.Thread(target=self._run, name=f"audit-writer-{index}", daemon=True)
            for index in range(writers or AUDIT_WRITERS)
        ]
        for thread in self._threads:
            thread.start()
        self.batches = 0
        self.events = 0

    def submit(self, row: Mapping[str, Any], *, urgent: bool = True) -> Future[None]:
        """Queue one event. ``urgent=False`` (records written *after* the fact, e.g. what a read returned) may wait
        up to DEFER_SECONDS to ride along with the next urgent batch, so it never delays someone's result."""
        return self.submit_copy_line(copy_line(row, COLUMNS), urgent=urgent)

    def submit_copy_line(self, line: bytes, *, urgent: bool = True) -> Future[None]:
        """``submit`` for an event already in COPY text form (audit.journal_format.copy_line)."""
        future: Future[None] = Future()
        if urgent:
            self._queue.put((line, future))
        else:
            with self._deferred_lock:
                self._deferred.append((line, future))
        return future

    def submit_line(self, line: bytes, *, urgent: bool = True) -> asyncio.Future[None] | None:
        """For a caller on an event loop: the same interface as audit.journal.AuditJournal."""
        future = self.submit_copy_line(line, urgent=urgent)
        return asyncio.wrap_future(future) if urgent else None

    def close(self, timeout: float = 10.0) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _run(self) -> None:
        connection: psycopg.Connection[Any] | None = None
        stopping = False
        while not stopping:
            batch, stopping = self._next_batch()
            if batch:
                connection = self._commit(connection, batch)
        self._close(connection)

    def _next_batch(self) -> tuple[list[tuple[bytes, Future[None]]], bool]:
        """Wait for an urgent event (at most DEFER_SECONDS), then take everything queued and all deferred events."""
        batch: list[tuple[bytes, Future[None]]] = []
        stopping = False
        first: Any
        try:
            first = self._queue.get(timeout=DEFER_SECONDS)
        except queue.Empty:
            first = _NOTHING
        if first is None:
            stopping = True
        elif first is not _NOTHING:
            batch.append(first)
        while not stopping and len(batch) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stopping = True
            else:
                batch.append(item)
        with self._deferred_lock:
            batch.extend(self._deferred)
            self._deferred.clear()
        return batch, stopping

    def _commit(
        self, connection: psycopg.Connection[Any] | None, batch: list[tuple[bytes, Future[None]]]
    ) -> psycopg.Connection[Any] | None:
        try:
            connection = self._write(connection, batch)
        except Exception:
            # Isolate the failure: retry one by one, so one bad event does not withhold everyone's results.
            log.warning("audit batch of %d events failed; retrying them one by one", len(batch))
            connection = self._close(connection)
            for line, future in batch:
                try:
                    connection = self._write(connection, [(line, future)])
                except Exception as exc:
                    log.exception("audit event could not be written; its result is withheld")
                    connection = self._close(connection)
                    future.set_exception(exc)
                else:
                    future.set_result(None)
            return connection
        for _, future in batch:
            future.set_result(None)
        return connection

    def _write(
        self, connection: psycopg.Connection[Any] | None, batch: list[tuple[bytes, Future[None]]]
    ) -> psycopg.Connection[Any]:
        """One statement in autocommit (its own transaction, durable when it returns): a multi-row INSERT for a
        small batch (one round trip), a COPY for a large one (cheaper per row, one more round trip)."""
        if connection is None or connection.closed:
            connection = psycopg.connect(self._conninfo, autocommit=True)
        if len(batch) < COPY_FROM:
            values = [value for line, _ in batch for value in copy_fields(line)]
            result = connection.pgconn.exec_params(insert_sql(len(batch)), values)
            if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
                message = (result.error_message or b"audit insert failed").decode("utf-8", "replace")
                raise psycopg.DatabaseError(message.strip())
        else:
            with connection.cursor() as cursor, cursor.copy(COPY_SQL) as copy:
                copy.write(b"".join(line for line, _ in batch))
        self.batches += 1
        self.events += len(batch)
        return connection

    @staticmethod
    def _close(connection: psycopg.Connection[Any] | None) -> None:
        if connection is not None:
            connection.close()
        return None
