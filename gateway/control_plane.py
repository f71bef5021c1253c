"""Control-plane work in the gateway's worker threads, on a connection that is known to be alive (issue 15).

The wire front decides statements, audits and reads tickets in threads (``asyncio.to_thread``) that live as long
as the process, each with its own Django connection. Django replaces a dead connection only at the edges of a
request (``close_old_connections``), and these threads have no requests: a connection that a PostgreSQL restart
or ``pg_terminate_backend`` ended stayed in its thread, and every decision made there failed until the gateway
restarted. ``run`` brackets each call instead:

* before: a connection with an error, or with bytes waiting on its socket while idle (the server's "terminating
  connection" and end of stream), is checked (``is_usable``) and closed if dead, so the call opens a new one. An
  idle, healthy connection costs one ``select`` on its socket, no round trip;
* after a database error that means the connection is gone: it is closed, so the next call reconnects;
* every change of the control plane's state is one structured log line (``phigate.faults``).

``call`` is how the event loop uses ``run``: in a worker thread, and bounded. A control plane that accepted the
connection and then went silent (a hung server, a path that black-holes after the handshake) used to hold a wire
decision or a sign-in until the socket gave up, minutes later, with the client hearing nothing. Now the caller
gets TimeoutError after ``CONTROL_PLANE_TIMEOUT_SECONDS`` and answers its client (08006); the thread itself
stays until its socket returns (new connections are bounded by ``connect_timeout``, phigate.settings).
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import InterfaceError, OperationalError

from phigate import envconfig, faults, outages

_R = TypeVar("_R")
DEFAULT_TIMEOUT_SECONDS = 15


def timeout_seconds() -> int:
    return envconfig.get_int("CONTROL_PLANE_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS, minimum=1)


async def call(fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
    """``run(fn, ...)`` in a worker thread (which keeps the task's context variables), at most
    ``CONTROL_PLANE_TIMEOUT_SECONDS``: then TimeoutError (see the module docstring)."""
    bound = timeout_seconds()
    try:
        return await asyncio.wait_for(asyncio.to_thread(run, fn, *args, **kwargs), timeout=bound)
    except TimeoutError:
        faults.dependency(faults.CONTROL_PLANE).down(f"no answer within {bound} s")  # one line per outage
        raise


def run(call: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
    """``call(*args, **kwargs)`` on a live control-plane connection (see the module docstring)."""
    replace_dead_connection()
    try:
        result = call(*args, **kwargs)
    except (OperationalError, InterfaceError) as exc:
        if outages.outage_of(exc) == faults.CONTROL_PLANE:
            faults.dependency(faults.CONTROL_PLANE).down(exc)
            _close()
        raise
    if connections[DEFAULT_DB_ALIAS].connection is not None:  # the call did reach the control plane
        faults.dependency(faults.CONTROL_PLANE).up()
    return result


def replace_dead_connection() -> None:
    """Close this thread's control-plane connection if it is dead, so the next query opens a new one."""
    wrapper = connections[DEFAULT_DB_ALIAS]
    if wrapper.connection is None or wrapper.in_atomic_block:
        return
    if (wrapper.errors_occurred or _input_waiting(wrapper.connection)) and not wrapper.is_usable():
        _close()
    wrapper.errors_occurred = False


def _input_waiting(connection: Any) -> bool:
    """An idle connection has nothing to read; a server that ended it has sent an error and closed the socket."""
    try:
        readable, _, _ = select.select([connection.fileno()], [], [], 0)
    except Exception:  # the socket is already gone
        return True
    return bool(readable)


def _close() -> None:
    wrapper = connections[DEFAULT_DB_ALIAS]
    if wrapper.in_atomic_block:
        return
    try:
        wrapper.close()
    except Exception:  # closing a dead connection may fail; it is dropped either way
        wrapper.connection = None
