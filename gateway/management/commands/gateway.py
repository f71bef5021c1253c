"""``manage.py gateway [--host H] [--port P] [--health-port N] [--processes N]``: the gateway (read-only credential).

With ``--processes N`` (or ``GATEWAY_PROCESSES``) above 1 it is a supervisor of N gateway processes sharing the
port (gateway.wire.group); each is this command with ``--member K``.

It serves the PostgreSQL wire listener and the API statements the web process queues in Redis, and, with
``GATEWAY_HEALTH_PORT`` (or ``--health-port``), ``/healthz`` and ``/readyz`` on that port (gateway.health). A
dependency going away never stops it: Redis and the control plane are reconnected with back-off (gateway.rpc,
gateway.control_plane), one structured log line per change of state.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandParser

from gateway import rpc
from gateway.health import GatewayHealth, HealthServer, health_port
from gateway.pipeline import DatasourceRuntime
from gateway.wire.group import MAX_MEMBERS, Membership, Supervisor, die_with_supervisor
from gateway.wire.lifecycle import max_sessions_per_agent
from gateway.wire.server import WireServer, tls_context
from phigate import envconfig
from policy.credentials import Access, configured_datasources
from policy.masking import require_pseudonym_key
from policy.patient_keys import require_patient_key
from policy.session_settings import SessionLimits

log = logging.getLogger("gateway")


class Command(BaseCommand):
    help = "Run the gateway: API statements (via Redis) and the PostgreSQL wire listener."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=6432)
        parser.add_argument("--concurrency", type=int, default=8, help="statements run at once for the API")
        parser.add_argument(
            "--health-port",
            type=int,
            default=None,
            help="port of /healthz and /readyz on --host (default: GATEWAY_HEALTH_PORT; 0 or unset: none)",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=None,
            help="gateway processes on the port, one per core at most (default: GATEWAY_PROCESSES, else 1)",
        )
        parser.add_argument("--member", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor

    def handle(self, *args: Any, **options: Any) -> None:
        if configured_datasources(Access.WRITE):
            raise ImproperlyConfigured("the gateway must not hold a write credential (DATASOURCE_*_WRITE_URL is set)")
        require_pseudonym_key()
        require_patient_key()  # the accounting of disclosures: every result's patient keys are recorded with it
        if not configured_datasources(Access.READ):
            log.warning("no DATASOURCE_<NAME>_READ_URL is set: every statement will fail")
        for name in configured_datasources(Access.READ):  # a malformed limit stops the start, not a sign-in
            SessionLimits.for_datasource(name)
        max_sessions_per_agent()
        probe_port = health_port() if options["health_port"] is None else options["health_port"]
        processes = options["processes"] or envconfig.get_int("GATEWAY_PROCESSES", 1, minimum=1, maximum=MAX_MEMBERS)
        if processes > 1 and options["member"] is None:
            self._supervise(processes, options, probe_port)
            return
        if options["member"] is not None:
            die_with_supervisor()
        membership = Membership.from_environment(options["member"])
        serve = self._run(options["host"], options["port"], options["concurrency"], probe_port, membership)
        # uvloop when installed (it is, from requirements.txt): the socket loop is the gateway's hot path.
        try:
            import uvloop
        except ImportError:  # pragma: no cover - plain asyncio works, only slower
            asyncio.run(serve)
        else:
            uvloop.run(serve)

    def _supervise(self, processes: int, options: dict[str, Any], probe_port: int) -> None:
        def member_argv(index: int) -> list[str]:
            return [
                sys.executable,
                os.path.abspath(sys.argv[0]),
                "gateway",
                f"--host={options['host']}",
                f"--port={options['port']}",
                f"--concurrency={options['concurrency']}",
                f"--health-port={probe_port if index == 0 else 0}",  # one member answers the probes
                f"--member={index}",
            ]

        log.info("gateway group of %s processes on %s:%s", processes, options["host"], options["port"])
        sys.exit(asyncio.run(Supervisor(processes, member_argv).run()))

    async def _run(self, host: str, port: int, concurrency: int, probe_port: int, membership: Membership) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runtime = DatasourceRuntime()
        wire = WireServer(runtime, tls_context(), membership)
        await wire.start(host, port)
        probes = HealthServer(GatewayHealth(wire.audit), wire.stats.snapshot)
        if probe_port:
            await probes.start(host, probe_port)
        log.info(
            "gateway listening on %s:%s (TLS %s); serving API statements from Redis",
            host,
            port,
            "on" if wire.tls else "off",
        )
        try:
            await rpc.serve(settings.REDIS_URL, runtime, stop, concurrency=concurrency)
        finally:
            await probes.close()
            await wire.close()
            await loop.run_in_executor(None, runtime.close)
            log.info("gateway stopped")
