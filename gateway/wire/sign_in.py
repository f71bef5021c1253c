"""Start-up of a wire session: encryption negotiation, cancel requests, SCRAM sign-in, the upstream connection.

Kept apart from the session's statement handling: nothing here sees a statement, and nothing after sign-in
needs the agent's secret. The session hands itself in as ``ClientSide`` (its socket and frame parser).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from audit.recorder import Context
from gateway import control_plane
from gateway.pgwire.backend import (
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    BackendMessage,
    NegotiateProtocolVersion,
    ParameterStatus,
    ReadyForQuery,
)
from gateway.pgwire.errors import ProtocolError
from gateway.pgwire.frontend import (
    CancelRequest,
    GSSENCRequest,
    PasswordMessage,
    SSLRequest,
    StartupMessage,
)
from gateway.pgwire.notices import error_response
from gateway.pgwire.parser import FrontendParser
from gateway.pgwire.sasl import parse_sasl_initial_response
from gateway.wire import bridge, lifecycle
from gateway.wire.scram_server import ScramFailure, ScramServer
from gateway.wire.upstream import Upstream, UpstreamError, UpstreamTarget
from identity.principal import Principal
from policy import session_settings
from policy.credentials import Access, target_url

log = logging.getLogger(__name__)

# The gateway's own database (agents, audit) cannot answer: class 08, like a connection failure, so clients and
# pools treat it as transient.
CONTROL_PLANE_UNAVAILABLE = "08006"
CONTROL_PLANE_MESSAGE = "the gateway's control plane is unavailable; try again later"

# Parameters a client may see from the upstream's start-up; others (e.g. session_authorization naming the
# read-only role) are not the agent's business.
FORWARDED_PARAMETERS = frozenset(
    {
        "server_version",
        "server_encoding",
        "client_encoding",
        "DateStyle",
        "IntervalStyle",
        "TimeZone",
        "integer_datetimes",
        "standard_conforming_strings",
        "in_hot_standby",
    }
)


class ClientSide(Protocol):
    """What start-up needs of the session: the client's socket, its frame parser and the session's identity."""

    writer: asyncio.StreamWriter
    parser: FrontendParser
    tls: Any
    context: Context
    throttle: Callable[[str, str], float] | None

    async def _read_client(self) -> Any: ...

    def _send_now(self, *messages: BackendMessage) -> None: ...

    def cancel_target(self, process_id: int, secret: bytes) -> Any: ...

    def forward_cancel(self, process_id: int, secret: bytes) -> bool: ...

    def backend_key(self) -> tuple[int, bytes]: ...


@dataclass(frozen=True)
class SignedIn:
    principal: Principal
    datasource: str
    wait_for_approval: bool
    upstream: Upstream
    startup_parameters: Mapping[str, str]


async def start_up(client: ClientSide) -> SignedIn | None:
    """Run the start-up exchange; None when the connection ends without a session (a cancel request, a refusal)."""
    writer = client.writer
    while True:
        message = await client._read_client()
        if isinstance(message, SSLRequest):
            if client.tls is None:
                writer.write(b"N")
                await writer.drain()
                continue
            client.parser.begin_encryption()
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(client.tls)
            continue
        if isinstance(message, GSSENCRequest):
            writer.write(b"N")
            await writer.drain()
            continue
        if isinstance(message, CancelRequest):
            target = client.cancel_target(message.process_id, message.secret_key)
            if target is not None:
                await target.cancel()
            else:  # another gateway process's session, or none: that process checks the secret
                client.forward_cancel(message.process_id, message.secret_key)
            return None
        if isinstance(message, StartupMessage):
            if getattr(client.tls, "required", False) and not _encrypted(client):
                await _refuse_clear_text(client, message)
                return None
            return await _sign_in(client, message)
        raise ProtocolError("08P01", f"unexpected {type(message).__name__} during start-up")


async def _sign_in(client: ClientSide, startup: StartupMessage) -> SignedIn | None:
    try:
        return await _sign_in_steps(client, startup)
    except ControlPlaneUnavailable:
        client._send_now(error_response("FATAL", CONTROL_PLANE_UNAVAILABLE, CONTROL_PLANE_MESSAGE))
        return None


async def _sign_in_steps(client: ClientSide, startup: StartupMessage) -> SignedIn | None:
    params = startup.parameters
    agent_name, datasource = params.get("user", ""), params.get("database", "") or params.get("user", "")
    unsupported = [name for name in params if name.startswith("_pq_.")]
    if startup.protocol_version & 0xFFFF or unsupported:
        client._send_now(NegotiateProtocolVersion(0, tuple(unsupported)))
    login = await _control_plane(bridge.look_up_login, agent_name, datasource)
    # Over TLS, SCRAM-SHA-256-PLUS too: the client proves it sees the certificate we sent (tls-server-end-point).
    scram = ScramServer(login.verifier, channel_binding=_channel_binding(client))
    client._send_now(AuthenticationSASL(scram.mechanisms))
    await client.writer.drain()
    failure = login.refusal
    try:
        mechanism, first = parse_sasl_initial_response(_expect_password(await client._read_client()))
        if mechanism not in scram.mechanisms or first is None:
            raise ScramFailure(f"unsupported SASL mechanism {mechanism!r}")
        client._send_now(AuthenticationSASLContinue(scram.server_first(first.decode("utf-8"), mechanism).encode()))
        await client.writer.drain()
        final = scram.server_final(_expect_password(await client._read_client()).decode("utf-8"))
    except (ScramFailure, UnicodeDecodeError) as exc:
        failure = failure or str(exc)
    if failure or login.principal is None:
        await _control_plane(bridge.record_sign_in, login, agent_name, datasource, client.context, failure or "refused")
        delay = client.throttle(agent_name, client.context.source_address or "") if client.throttle else 0.0
        if delay:
            await asyncio.sleep(delay)
        client._send_now(error_response("FATAL", "28P01", f'password authentication failed for user "{agent_name}"'))
        return None
    # The agent proved its token. What it asks of the session is judged now, like PostgreSQL, which applies
    # start-up settings and connection limits after authentication (nothing here is told to a stranger).
    limits = session_settings.SessionLimits.for_datasource(datasource)
    policy_path = _policy_search_path(client, datasource)
    refused: tuple[str, str] | None = None
    try:
        chosen = session_settings.judge_startup(params, limits, policy_path)
    except session_settings.StartupRefused as exc:
        refused = (exc.sqlstate, exc.message)
    seat = lifecycle.current_seat()
    if refused is None and seat is not None and not await seat.claim(login.principal, datasource):
        refused = (lifecycle.TOO_MANY_CONNECTIONS, f'too many connections for role "{agent_name}"')
    if refused is not None:
        sqlstate, message = refused
        await _control_plane(bridge.record_session_refused, login, agent_name, datasource, client.context, message)
        client._send_now(error_response("FATAL", sqlstate, message))
        return None
    # No audit record, no session (invariant 6): a failure here is answered as the control plane's.
    await _control_plane(bridge.record_sign_in, login, agent_name, datasource, client.context)
    scope = session_settings.current_scope()
    if scope is not None:  # what the classifier judges this session's SET statements by
        scope.limits = limits
    client._send_now(AuthenticationSASLFinal(final.encode()), AuthenticationOk())
    try:
        upstream = await Upstream.connect(
            UpstreamTarget.from_url(target_url(datasource, Access.READ)),
            session_settings.upstream_application_name(agent_name, chosen.application_name),
            chosen.upstream,
        )
    except UpstreamError as error:
        client._send_now(error_response("FATAL", error.sqlstate, f"target database: {error}"))
        return None
    for name, value in upstream.parameters.items():
        if name in FORWARDED_PARAMETERS:
            client._send_now(ParameterStatus(name, value))
    process_id, secret = client.backend_key()
    reported_name = chosen.application_name.encode("utf-8")[:63].decode("utf-8", "ignore")
    client._send_now(
        ParameterStatus("session_authorization", agent_name),
        ParameterStatus("application_name", reported_name),
        BackendKeyData(process_id, secret),
        ReadyForQuery("I"),
    )
    await client.writer.drain()
    return SignedIn(login.principal, datasource, chosen.approval == "wait", upstream, dict(params))


_R = TypeVar("_R")


class ControlPlaneUnavailable(Exception):
    """A control-plane call failed during sign-in; the client is answered FATAL (``_sign_in``), never cut."""


async def _control_plane(call: Callable[..., _R], *args: Any) -> _R:
    """A control-plane (Django database) call in a worker thread."""
    try:
        return await control_plane.call(call, *args)  # bounded; a dead connection is replaced first
    except Exception as exc:
        log.exception("wire sign-in: control plane call %s failed", getattr(call, "__name__", call))
        raise ControlPlaneUnavailable() from exc


def _policy_search_path(client: ClientSide, datasource: str) -> tuple[str, ...]:
    """The search path the PHI policy resolves this data source's names on (its catalog snapshot's)."""
    runtime = getattr(client, "runtime", None)
    catalogs = getattr(runtime, "catalogs", None)
    catalog = catalogs.peek(datasource) if catalogs is not None else None
    return tuple(catalog.search_path) if catalog is not None else session_settings.DEFAULT_SEARCH_PATH


def _encrypted(client: ClientSide) -> bool:
    return client.writer.get_extra_info("ssl_object") is not None


def _channel_binding(client: ClientSide) -> bytes | None:
    """The tls-server-end-point data of our certificate when this connection is TLS (see server.WireTLSContext)."""
    return getattr(client.tls, "channel_binding", None) if _encrypted(client) else None


async def _refuse_clear_text(client: ClientSide, startup: StartupMessage) -> None:
    """GATEWAY_REQUIRE_TLS: a client that did not ask for TLS is refused, as by a hostssl-only pg_hba.conf."""
    params = startup.parameters
    agent_name, datasource = params.get("user", ""), params.get("database", "") or params.get("user", "")
    await _control_plane(
        bridge.record_sign_in,
        bridge.Login(None, None),
        agent_name,
        datasource,
        client.context,
        "TLS required: the client did not ask for encryption",
    )
    host = client.context.source_address or ""
    client._send_now(
        error_response(
            "FATAL",
            "28000",
            f'no pg_hba.conf entry for host "{host}", user "{agent_name}", database "{datasource}", no encryption',
            detail="This gateway accepts only TLS connections.",
            hint="Connect with sslmode=require (or verify-full).",
        )
    )
    await client.writer.drain()


def _expect_password(message: object) -> bytes:
    if not isinstance(message, PasswordMessage):
        raise ProtocolError("08P01", f"expected a SASL response, got {type(message).__name__}")
    return message.payload


def approval_mode(options: str) -> str:
    """Read ``-c gateway.approval=wait`` (or ``--gateway.approval=wait``) from the startup options."""
    try:
        settings = session_settings.option_settings(options)
    except session_settings.StartupRefused:
        return "error"
    for name, value in settings:
        if name.lower() == session_settings.GATEWAY_APPROVAL:
            return value
    return "error"
