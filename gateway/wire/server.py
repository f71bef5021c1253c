"""The asyncio server of the wire front: accepts connections, runs one WireSession each, drains on shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import defaultdict, deque

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from audit.sinks import open_wire_audit_sink
from gateway.decision_cache import DecisionCache
from gateway.pipeline import DatasourceRuntime
from gateway.wire.group import Membership
from gateway.wire.lifecycle import SessionLifecycle
from gateway.wire.scram_server import tls_server_end_point
from gateway.wire.session import CancelKey, WireClientProtocol, WireSession
from gateway.wire.stats import WireStats
from phigate import envconfig
from policy import session_settings

log = logging.getLogger(__name__)

FAILURE_WINDOW_SECONDS = 300.0
FREE_FAILURES = 3
MAX_DELAY_SECONDS = 8.0
SHUTDOWN_GRACE_SECONDS = 5.0  # statements in flight may finish before their sessions are told to end
CLOSE_WAIT_SECONDS = 5.0  # then, how long ended sessions get to flush and close before their tasks are cancelled


class FailureThrottle:
    """Slows down repeated failed sign-ins per (agent name, address): 1 s, 2 s, 4 s... up to 8 s.

    A name that fails once and never again (a scanner's made-up names) is forgotten once its window has passed:
    whenever the table has doubled since it was last swept, so the sweeps cost O(1) per failure.
    """

    def __init__(self, window_seconds: float = FAILURE_WINDOW_SECONDS) -> None:
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._window = window_seconds
        self._sweep_at = 1024

    def __call__(self, name: str, address: str) -> float:
        now = time.monotonic()
        if len(self._failures) >= self._sweep_at:
            for key in [key for key, times in self._failures.items() if now - times[-1] > self._window]:
                del self._failures[key]
            self._sweep_at = max(1024, 2 * len(self._failures))
        failures = self._failures[(name, address)]
        failures.append(now)
        while failures and now - failures[0] > self._window:
            failures.popleft()
        excess = len(failures) - FREE_FAILURES
        return 0.0 if excess <= 0 else min(float(2 ** (excess - 1)), MAX_DELAY_SECONDS)


class WireTLSContext(ssl.SSLContext):
    """The wire's TLS context, with what sign-in needs to know about it.

    ``channel_binding``: the ``tls-server-end-point`` data of the certificate (SCRAM-SHA-256-PLUS is offered
    over TLS when it is set). ``required``: a client that does not ask for TLS is refused (GATEWAY_REQUIRE_TLS).
    """

    channel_binding: bytes | None = None
    required: bool = False


def tls_context() -> WireTLSContext | None:
    """TLS when GATEWAY_TLS_CERT(_FILE) and GATEWAY_TLS_KEY(_FILE) name a certificate and key (PEM paths).

    GATEWAY_REQUIRE_TLS=true refuses clear-text clients, and refuses to start without a certificate.
    """
    cert = envconfig.get_str("GATEWAY_TLS_CERT_FILE")
    key = envconfig.get_str("GATEWAY_TLS_KEY_FILE")
    required = envconfig.get_bool("GATEWAY_REQUIRE_TLS", False)
    if not cert and not key:
        if required:
            raise envconfig.ImproperlyConfigured(
                "GATEWAY_REQUIRE_TLS is set but no certificate is: set GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE"
            )
        return None
    if not (cert and key):
        raise envconfig.ImproperlyConfigured("set both GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE")
    context = WireTLSContext(ssl.PROTOCOL_TLS_SERVER)  # what ssl.create_default_context(CLIENT_AUTH) makes
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    with open(cert, "rb") as handle:  # the leaf is the first certificate of the chain file, as OpenSSL reads it
        leaf = x509.load_pem_x509_certificates(handle.read())[0]
    context.channel_binding = tls_server_end_point(leaf.public_bytes(serialization.Encoding.DER))
    context.required = required
    return context


class WireServer:
    def __init__(
        self, runtime: DatasourceRuntime, tls: ssl.SSLContext | None = None, membership: Membership | None = None
    ) -> None:
        self.runtime = runtime
        self.tls = tls
        self.membership = membership or Membership()
        self.cancels: socket.socket | None = None
        self.registry: dict[CancelKey, WireSession] = {}
        self.sessions: set[asyncio.Task[None]] = set()
        self.throttle = FailureThrottle()
        self.audit = open_wire_audit_sink()
        self.decisions = DecisionCache()
        self.stats = WireStats()
        self.sessions_cancelling: set[asyncio.Task[None]] = set()
        self.lifecycle = SessionLifecycle(group_claims=self.membership.claims)
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Like ``asyncio.start_server``, with the protocol that gives sessions their fast path."""
        loop = asyncio.get_running_loop()

        def protocol() -> WireClientProtocol:
            return WireClientProtocol(asyncio.StreamReader(loop=loop), self._accept, loop=loop)

        # In a group, every member listens on the same port and the kernel spreads connections (gateway.wire.group).
        self.server = await loop.create_server(protocol, host, port, reuse_port=self.membership.grouped or None)
        self.cancels = self.membership.listen_for_cancels(self._cancel_forwarded)
        self.lifecycle.start()
        return self.server

    def _cancel_forwarded(self, process_id: int, secret: bytes) -> None:
        """Another member received a CancelRequest for one of our sessions; the key's secret decides, as ever."""
        session = self.registry.get(CancelKey(process_id, secret))
        if session is not None:
            task = asyncio.create_task(session.cancel())
            self.sessions_cancelling.add(task)
            task.add_done_callback(self.sessions_cancelling.discard)

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
            stats=self.stats,
            membership=self.membership,
        )
        client_protocol = writer.transport.get_protocol()
        if isinstance(client_protocol, WireClientProtocol):
            client_protocol.session = session
        task = asyncio.current_task()
        if task is not None:
            self.sessions.add(task)
        # Both bound in this task's context, which sign-in and the statement decisions (threads) inherit.
        session_settings.bind_scope()
        seat = self.lifecycle.admit(session)
        try:
            await session.run()
        except Exception:  # one bad session must never take the gateway down
            log.exception("wire session ended with an error")
        finally:
            self.lifecycle.release(seat)
            if task is not None:
                self.sessions.discard(task)

    async def close(self, grace_seconds: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop accepting; give statements in flight up to ``grace_seconds``, then end every session with FATAL
        57P01 (never a silent cut), wait for them to close, and commit what they queued for the audit trail."""
        if self.server is not None:
            self.server.close()
        if self.cancels is not None:
            asyncio.get_running_loop().remove_reader(self.cancels.fileno())
            self.cancels.close()
        await self.lifecycle.shutdown(grace_seconds)
        if self.sessions:
            _, pending = await asyncio.wait(set(self.sessions), timeout=CLOSE_WAIT_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        await asyncio.to_thread(self.audit.close)  # commit what the last sessions queued
