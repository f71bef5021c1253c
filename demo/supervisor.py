"""Child processes of the demo: start them, relay their output, notice deaths, stop them.

Each child gets its own session (process group) so that Ctrl-C reaches only the orchestrator, which then
stops children in a known order, and so that stopping a child also stops what it forked (celery's pool).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Final

GRACE_SECONDS: Final = 10.0
_print_lock = threading.Lock()


def say(message: str, prefix: str = "demo") -> None:
    """One orchestrator line on the console. Callers never pass secrets or PHI."""
    with _print_lock:
        sys.stdout.write(f"[{prefix}] {message}\n")
        sys.stdout.flush()


class Child:
    """One long-running process whose output is copied to the console (prefixed) and to its log file."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], cwd: Path, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed in wait
        self.process = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
            errors="replace",
            bufsize=1,
        )
        assert self.process.stdout is not None
        self._pump = threading.Thread(target=self._relay, args=(self.process.stdout,), daemon=True)
        self._pump.start()

    def _relay(self, stream: IO[str]) -> None:
        for line in stream:
            text = line.rstrip("\n")
            say(text, self.name)
            self._log.write(text + "\n")
            self._log.flush()

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        return self.process.poll()

    def signal_group(self, signum: int) -> None:
        """Signal the child's whole process group (its pgid is its pid: start_new_session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def finish(self) -> None:
        """After the process is gone: kill stragglers it forked, drain its output, close the log."""
        self.signal_group(signal.SIGKILL)
        self._pump.join(timeout=2)
        self._log.close()


def stop_all(children: Sequence[Child], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM every child's group, wait up to ``grace`` seconds in total, then SIGKILL what is left."""
    for child in children:
        if child.exit_code() is None:
            child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{child.name} did not stop within {grace:.0f}s; killing it")
            child.signal_group(signal.SIGKILL)
            child.process.wait(timeout=5)
        child.finish()


def first_dead(children: Sequence[Child]) -> Child | None:
    """The first child that has exited, if any: one death brings the whole demo down."""
    for child in children:
        if child.exit_code() is not None:
            return child
    return None
