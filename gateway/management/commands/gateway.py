"""``manage.py gateway [--host H] [--port P] [--health-port N]``: the gateway process (read-only credential only).

It serves the PostgreSQL wire listener and the API statements the web process queues in Redis, and, with
``GATEWAY_HEALTH_PORT`` (or ``--health-port``), ``/healthz`` and ``/readyz`` on that port (gateway.health). A
dependency going away never stops it: Redis and the control plane are reconnected with back-off (gateway.rpc,
gateway.control_plane), one structured log line per change of state.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandParser

from gateway import rpc
from gateway.health import GatewayHealth, HealthServer, health_port
from gateway.pipeline import DatasourceRuntime
from gateway.wire.lifecycle import max_sessions_per_agent
from gateway.wire.server import WireServer, tls_context
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
        serve = self._run(options["host"], options["port"], options["concurrency"], probe_port)
        # uvloop when installed (it is, from requirements.txt): the socket loop is the gateway's hot path.
        try:
            import uvloop
        except ImportError:  # pragma: no cover - plain asyncio works, only slower
            asyncio.run(serve)
        else:
            uvloop.run(serve)

    async def _run(self, host: str, port: int, concurrency: int, probe_port: int) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runtime = DatasourceRuntime()
        wire = WireServer(runtime, tls_context())
        await wire.start(host, port)
        probes = HealthServer(GatewayHealth(wire.audit))
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
