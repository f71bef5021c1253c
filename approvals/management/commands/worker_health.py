"""``manage.py worker_health [--node NAME] [--live]``: the executor's (Celery worker's) health probe.

A Celery worker has no HTTP port, so its probe is this command, run with the worker's own environment (an
orchestrator's exec probe, or by hand). It prints one JSON object and exits 0 when ready, 1 when not:

* ``worker``: a worker answers a Celery ping (``--node``: that node; else any), like ``celery inspect ping``;
* ``control_plane``, ``redis`` (the broker) and ``target:<name>`` for each ``DATASOURCE_<NAME>_WRITE_URL`` in the
  environment (the write role), checked now, as the web and gateway ``/readyz`` do (``phigate.health``).

``--live`` checks only that the worker answers (liveness): it never fails because a target is down.
The worker itself needs no restart when a dependency comes back: Celery reconnects to its broker, and each
task opens its own database connections.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from phigate import faults
from phigate.health import (
    CHECK_TIMEOUT_SECONDS,
    Check,
    DependencyDown,
    control_plane_probe,
    readiness,
    redis_probe,
    target_probe,
)
from policy.credentials import Access, configured_datasources

WORKER = "worker"


class Command(BaseCommand):
    help = "Check that a Celery worker answers and that its dependencies are up; prints JSON, exit 0 when ready."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--node", default="", help="the worker's node name (celery -n): executor@host, or executor")
        parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the ping")
        parser.add_argument("--live", action="store_true", help="liveness only: does the worker answer?")

    def handle(self, *args: Any, **options: Any) -> None:
        ping = Check(WORKER, _ping(options["node"], options["timeout"]))
        checks = [ping]
        if not options["live"]:
            checks += [Check(faults.CONTROL_PLANE, control_plane_probe), Check(faults.REDIS, redis_probe())]
            checks += [
                Check(faults.target(name), target_probe(name, Access.WRITE))
                for name in configured_datasources(Access.WRITE)
            ]
        status, body = readiness(WORKER, checks, timeout=max(options["timeout"], CHECK_TIMEOUT_SECONDS) + 0.5)
        self.stdout.write(json.dumps(body))
        if status != 200:
            raise SystemExit(1)


def _ping(node: str, timeout: float) -> Any:
    if node and "@" not in node:  # "executor" is "executor@<this host>", as ``celery -n executor@%h`` names it
        node = f"{node}@{socket.gethostname()}"

    def probe() -> None:
        from phigate.celery import app

        replies = app.control.ping(destination=[node] if node else None, timeout=timeout)
        if not replies:
            raise DependencyDown(f"no worker{' ' + node if node else ''} answered a ping within {timeout:.1f} s")

    return probe
