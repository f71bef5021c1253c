"""The asyncio server of the wire front: accepts connections, runs one WireSession each, drains on shutdown."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import defaultdict, deque

from audit.sinks import open_wire_audit_sink
from gateway.decision_cache import DecisionCache
from gateway.pipeline import DatasourceRuntime
from gateway.wire.session import CancelKey, WireClientProtocol, WireSession
from phigate import envconfig

log = logging.getLogger(__name__)

FAILURE_WINDOW_SECONDS = 300.0
FREE_FAILURES = 3
MAX_DELAY_SECONDS = 8.0


class FailureThrottle:
    """Slows down repeated failed sign-ins per (agent name, address): 1 s, 2 s, 4 s... up to 8 s."""

    def __init__(self) -> None:
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)

    def __call__(self, name: str, address: str) -> float:
        now = time.monotonic()
        failures = self._failures[(name, address)]
        failures.append(now)
        while failures and now - failures[0] > FAILURE_WINDOW_SECONDS:
            failures.popleft()
        excess = len(failures) - FREE_FAILURES
        return 0.0 if excess <= 0 else min(float(2 ** (excess - 1)), MAX_DELAY_SECONDS)


def tls_context() -> ssl.SSLContext | None:
    """TLS when GATEWAY_TLS_CERT(_FILE) and GATEWAY_TLS_KEY(_FILE) name a certificate and key (PEM paths)."""
    cert = envconfig.get_str("GATEWAY_TLS_CERT_FILE")
    key = envconfig.get_str("GATEWAY_TLS_KEY_FILE")
    if not cert and not key:
        return None
    if not (cert and key):
        raise envconfig.ImproperlyConfigured("set both GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class WireServer:
    def __init__(self, runtime: DatasourceRuntime, tls: ssl.SSLContext | None = None) -> None:
        self.runtime = runtime
        self.tls = tls
        self.registry: dict[CancelKey, WireSession] = {}
        self.sessions: set[asyncio.Task[None]] = set()
        self.throttle = FailureThrottle()
        self.audit = open_wire_audit_sink()
        self.decisions = DecisionCache()
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Like ``asyncio.start_server``, with the protocol that gives sessions their fast path."""
        loop = asyncio.get_running_loop()

        def protocol() -> WireClientProtocol:
            return WireClientProtocol(asyncio.StreamReader(loop=loop), self._accept, loop=loop)

        self.server = await loop.create_server(protocol, host, port)
        return self.server

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = WireSession(
            reader,
            writer,
            self.runtime,
            self.registry,
            tls=self.tls,
            throttle=self.throttle,
            audit=self.audit,
            decisions=self.decisions,
        )
        client_protocol = writer.transport.get_protocol()
        if isinstance(client_protocol, WireClientProtocol):
            client_protocol.session = session
        task = asyncio.current_task()
        if task is not None:
            self.sessions.add(task)
        try:
            await session.run()
        except Exception:  # one bad session must never take the gateway down
            log.exception("wire session ended with an error")
        finally:
            if task is not None:
                self.sessions.discard(task)

    async def close(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, give open sessions time to finish, then cut the rest."""
        if self.server is not None:
            self.server.close()
        if self.sessions:
            _, pending = await asyncio.wait(set(self.sessions), timeout=grace_seconds)
            for task in pending:
                task.cancel()
        await asyncio.to_thread(self.audit.close)  # commit what the last sessions queued
