"""The gateway's health endpoints: a small HTTP listener beside the wire listener (``GATEWAY_HEALTH_PORT``).

The gateway is not a web process, so it answers ``GET /healthz`` and ``GET /readyz`` itself, on its event loop,
on the wire listener's host and the port ``GATEWAY_HEALTH_PORT`` (or ``manage.py gateway --health-port``); unset
or 0, there is no listener.

* ``/healthz``: 200 while the event loop answers.
* ``/stats``: the wire front's counts (gateway.wire.stats): statements, and how many took the fast paths.
* ``/readyz``: the control plane, Redis, each data source's target with the read-only role (``target:<name>``)
  and the audit journal, checked now (``phigate.health``); 200 when all are up, else 503. ``fronts`` says what
  still works: the wire front needs no Redis, the API front (statements queued by the web process) does::

      {"status": "unavailable", "process": "gateway", "down": ["redis"],
       "dependencies": {"control_plane": "up", "redis": "down", "target:clinic": "up", "audit_journal": "up"},
       "fronts": {"wire": "up", "api": "down"}}
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings

from phigate import envconfig, faults
from phigate.health import Check, control_plane_probe, readiness, redis_probe, target_probe
from policy.credentials import Access, configured_datasources

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 5.0
MAX_REQUEST_BYTES = 8192
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def health_port() -> int:
    return envconfig.get_int("GATEWAY_HEALTH_PORT", 0, minimum=0, maximum=65535)


class GatewayHealth:
    """What ``/readyz`` checks; ``journal`` is the wire front's audit sink (``health()`` when it is a journal)."""

    def __init__(self, journal: Any = None) -> None:
        self.journal = journal

    def checks(self) -> list[Check]:
        checks = [
            Check(faults.CONTROL_PLANE, control_plane_probe),
            Check(faults.REDIS, redis_probe(settings.REDIS_URL)),
        ]
        checks += [
            Check(faults.target(name), target_probe(name, Access.READ)) for name in configured_datasources(Access.READ)
        ]
        if hasattr(self.journal, "health"):
            checks.append(Check(faults.AUDIT_JOURNAL, self._journal_probe))
        return checks

    def _journal_probe(self) -> None:
        state = self.journal.health()
        if state.get("status") != "ok":
            raise RuntimeError(f"audit journal: {state.get('error') or state.get('status')}")

    def readiness(self) -> tuple[int, dict[str, Any]]:
        checks = self.checks()
        status, body = readiness("gateway", checks)
        wire_down = [name for name in body["down"] if name != faults.REDIS]
        body["fronts"] = {"wire": "down" if wire_down else "up", "api": "down" if body["down"] else "up"}
        return status, body


class HealthServer:
    def __init__(self, health: GatewayHealth, stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self.health = health
        self.stats = stats
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port)
        log.info("gateway health endpoints on http://%s:%s/healthz and /readyz", host, port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_SECONDS)
            method, path = _request_line(head)
            status, body = await self._answer(method, path)
            payload = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass  # a probe that went away or sent nonsense gets nothing
        finally:
            writer.close()

    async def _answer(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        if method != "GET":
            return 405, {"error": "only GET"}
        if path == "/healthz":
            return 200, {"ok": True, "status": "ok", "process": "gateway"}
        if path == "/readyz":
            return await asyncio.to_thread(self.health.readiness)
        if path == "/stats" and self.stats is not None:
            return 200, {"process": "gateway", "wire": self.stats()}
        return 404, {"error": "not found; try /healthz, /readyz or /stats"}


def _request_line(head: bytes) -> tuple[str, str]:
    if len(head) > MAX_REQUEST_BYTES:
        raise ValueError("request too large")
    method, target, _version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
    return method, target.split("?", 1)[0]
