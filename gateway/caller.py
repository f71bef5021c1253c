"""The caller of an API statement, as the gateway's worker thread sees it: its deadline, and whether it still waits.

An API statement comes from a web process that waits for the reply until a deadline it put in the request
(``gateway.rpc``). Work for a caller that has stopped waiting is work nobody will see, so the gateway bounds the
statement by that deadline and stops it when the caller is gone:

* the read's statement timeout is at most the time left before the deadline (less ``REPLY_MARGIN_SECONDS`` to
  record the outcome and send the reply), so PostgreSQL itself stops a read the caller would not wait for;
* when the caller is gone before the deadline (the web process died, or gave up), ``abandon`` cancels the
  statement on its connection (a PostgreSQL cancel request): it fails as "canceling statement due to user
  request", and that failure is its outcome record.

``gateway.read_executor`` asks ``current()`` for the scope of the thread it runs in; the wire front has none.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

REPLY_MARGIN_SECONDS = 1.0
SHORTEST_TIMEOUT_MS = 1


class CallerScope:
    def __init__(self, request_id: str, deadline: float) -> None:
        self.request_id = request_id
        self.deadline = deadline  # wall clock (time.time()), as the caller wrote it
        self.gone = threading.Event()
        self._lock = threading.Lock()
        self._connection: Any = None  # the psycopg connection running the caller's statement, while it does

    def remaining(self) -> float:
        return self.deadline - time.time()

    def statement_timeout_ms(self, configured_ms: int) -> int:
        """The configured timeout, or less: what is left before the caller's deadline. A caller already gone gets
        the shortest timeout, so PostgreSQL refuses the read itself (and that failure is on record)."""
        if self.gone.is_set():
            return SHORTEST_TIMEOUT_MS
        left_ms = int((self.remaining() - REPLY_MARGIN_SECONDS) * 1000)
        return max(SHORTEST_TIMEOUT_MS, min(configured_ms, left_ms))

    @contextlib.contextmanager
    def running_on(self, connection: Any) -> Iterator[None]:
        """While the caller's statement runs on ``connection``, ``abandon`` cancels it there."""
        with self._lock:
            self._connection = connection
        try:
            yield
        finally:
            with self._lock:
                self._connection = None

    def abandon(self, why: str) -> None:
        """The caller is gone: cancel its statement if one is running (blocking: call from a thread)."""
        if self.gone.is_set():
            return
        self.gone.set()
        # The lock is held during the cancel request: the statement's thread cannot hand the connection back to
        # the pool meanwhile, so the cancel can never reach another request's statement on a reused connection.
        with self._lock:
            connection = self._connection
            if connection is None:
                return
            log.info("gateway request %s: %s; cancelling its statement", self.request_id, why)
            try:
                connection.cancel_safe(timeout=5.0)
            except Exception as exc:  # the statement still ends at its (deadline-bound) statement timeout
                log.warning("gateway request %s: could not cancel its statement: %s", self.request_id, exc)


_current: contextvars.ContextVar[CallerScope | None] = contextvars.ContextVar("phigate_rpc_caller", default=None)


def current() -> CallerScope | None:
    """The scope of the API request this thread works for, if any."""
    return _current.get()


@contextlib.contextmanager
def serving(scope: CallerScope | None) -> Iterator[None]:
    token = _current.set(scope)
    try:
        yield
    finally:
        _current.reset(token)


@contextlib.contextmanager
def statement_on(connection: Any) -> Iterator[None]:
    """For the read executor: register the connection with the current caller, if there is one."""
    scope = current()
    if scope is None:
        yield
        return
    with scope.running_on(connection):
        yield
