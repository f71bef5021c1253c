"""``manage.py gateway [--host H] [--port P]``: the gateway process (read-only credential only)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandParser

from gateway import rpc
from gateway.pipeline import DatasourceRuntime
from gateway.wire.lifecycle import max_sessions_per_agent
from gateway.wire.server import WireServer, tls_context
from policy.credentials import Access, configured_datasources
from policy.masking import require_pseudonym_key
from policy.session_settings import SessionLimits

log = logging.getLogger("gateway")


class Command(BaseCommand):
    help = "Run the gateway: API statements (via Redis) and the PostgreSQL wire listener."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=6432)
        parser.add_argument("--concurrency", type=int, default=8, help="statements run at once for the API")

    def handle(self, *args: Any, **options: Any) -> None:
        if configured_datasources(Access.WRITE):
            raise ImproperlyConfigured("the gateway must not hold a write credential (DATASOURCE_*_WRITE_URL is set)")
        require_pseudonym_key()
        if not configured_datasources(Access.READ):
            log.warning("no DATASOURCE_<NAME>_READ_URL is set: every statement will fail")
        for name in configured_datasources(Access.READ):  # a malformed limit stops the start, not a sign-in
            SessionLimits.for_datasource(name)
        max_sessions_per_agent()
        # uvloop when installed (it is, from requirements.txt): the socket loop is the gateway's hot path.
        try:
            import uvloop
        except ImportError:  # pragma: no cover - plain asyncio works, only slower
            asyncio.run(self._run(options["host"], options["port"], options["concurrency"]))
        else:
            uvloop.run(self._run(options["host"], options["port"], options["concurrency"]))

    async def _run(self, host: str, port: int, concurrency: int) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runtime = DatasourceRuntime()
        wire = WireServer(runtime, tls_context())
        await wire.start(host, port)
        log.info(
            "gateway listening on %s:%s (TLS %s); serving API statements from Redis",
            host,
            port,
            "on" if wire.tls else "off",
        )
        try:
            await rpc.serve(settings.REDIS_URL, runtime, stop, concurrency=concurrency)
        finally:
            await wire.close()
            await loop.run_in_executor(None, runtime.close)
            log.info("gateway stopped")
