"""A child the harness starts dies with the test process that started it, even when that one is killed -9 (no
teardown runs): orphaned gateways and workers of a killed run used to take the next run's requests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from tests.services import REPO

PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    from tests.services import die_with_the_test_run
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        start_new_session=True,
        preexec_fn=die_with_the_test_run,
    )
    print(child.pid, flush=True)
    time.sleep(120)
    """
)


def test_a_child_dies_when_the_test_process_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while child.is_running() and child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, "the child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
