"""The state of each dependency a process relies on, and the structured log line of each change (issue 15).

A dependency (the control plane, Redis, a target database, the audit journal) is *up* or *down*. Whoever
notices a failure calls ``dependency(name).down(error)``; whoever next succeeds calls ``.up()``. Only a change
of state is logged, as one line a log pipeline can parse::

    dependency fault: dependency=redis state=down error="ConnectionError: Error 111 connecting to ..."
    dependency fault: dependency=redis state=up down_seconds=12.4

so a Redis that stays away for an hour costs two lines, not one per reconnection attempt. Errors are scrubbed of
anything that looks like a credential (a password in a URL or a conninfo string) before they are logged.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("phigate.faults")

CONTROL_PLANE = "control_plane"
REDIS = "redis"
GATEWAY = "gateway"
AUDIT_JOURNAL = "audit_journal"

_URL_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")
_PASSWORD_SETTING = re.compile(r"(password\s*=\s*)(\"[^\"]*\"|'[^']*'|\S+)", re.IGNORECASE)
_MAX_ERROR_LENGTH = 300


def target(datasource: str) -> str:
    """The dependency name of one data source's target database."""
    return f"target:{datasource}"


def describe(error: BaseException | str) -> str:
    """One line saying what failed: the exception's type and message, with credentials removed."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}".rstrip(": ")
    text = " ".join(text.split())
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    text = _PASSWORD_SETTING.sub(r"\1***", text)
    return text[:_MAX_ERROR_LENGTH]


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class DependencyState:
    """Up or down, since when, and the last error; thread-safe, logs on changes only."""

    name: str
    is_up: bool = True
    since: float = field(default_factory=time.monotonic)
    error: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def down(self, error: BaseException | str) -> None:
        described = describe(error)
        with self._lock:
            changed = self.is_up
            self.is_up, self.error = False, described
            if changed:
                self.since = time.monotonic()
        if changed:
            log.warning("dependency fault: dependency=%s state=down error=%s", self.name, _quoted(described))

    def up(self) -> None:
        if self.is_up:  # the common case: no lock, nothing to say
            return
        with self._lock:
            changed = not self.is_up
            down_for = time.monotonic() - self.since
            if changed:
                self.is_up, self.error, self.since = True, "", time.monotonic()
        if changed:
            log.warning("dependency fault: dependency=%s state=up down_seconds=%.1f", self.name, down_for)


_states: dict[str, DependencyState] = {}
_states_lock = threading.Lock()


def dependency(name: str) -> DependencyState:
    """This process's state of one dependency (created up, on first use)."""
    state = _states.get(name)
    if state is None:
        with _states_lock:
            state = _states.setdefault(name, DependencyState(name))
    return state


def report(name: str, error: BaseException | str | None) -> None:
    """``down(error)`` when there is an error, ``up()`` when there is none."""
    if error is None:
        dependency(name).up()
    else:
        dependency(name).down(error)
