"""Streamable HTTP at ``/mcp``, in front of Django in the web process's ASGI application.

Requests under ``/mcp`` go to the SDK's streamable HTTP app behind a bearer guard; everything else goes to
Django. The guard does what the API's ``BearerTokenAuthentication`` does (same token lookup, failures audited,
the token never logged) and one thing more: only agent tokens may use MCP (403 for a person's API token).

The SDK's session manager needs a task group for its whole life, started by the ASGI lifespan (uvicorn runs it);
``lifespan`` scopes are therefore handed to the SDK's app. It runs stateless with JSON answers: every tool call
is one authenticated POST, nothing lives in one worker's memory, so any number of web workers can serve /mcp.
Django's ``ALLOWED_HOSTS`` check is applied here too, since Django never sees these requests.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from django.conf import settings
from django.db import close_old_connections
from django.http.request import split_domain_port, validate_host
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit.models import EventKind, Outcome
from audit.recorder import Context, record
from gateway.mcp.server import OUTAGE_KEY, build_server
from gateway.mcp.tools import Caller
from identity.authentication import principal_for_token, request_context
from identity.principal import Principal
from phigate import faults, outages

MCP_PATH = "/mcp"
PRINCIPAL_KEY = "phigate.principal"  # the guard puts the authenticated Principal in the ASGI scope under this key


def with_mcp(django_application: Callable[[Any, Any, Any], Awaitable[None]]) -> ASGIApp:
    """The web process's ASGI application: ``/mcp`` to the MCP server, everything else to Django."""
    mcp_app = build_server(caller_of_request).streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,
        # Host checking is done by the guard, against Django's own ALLOWED_HOSTS.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    guarded = BearerGuard(mcp_app)

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # Django has no lifespan; the MCP session manager needs one
            await mcp_app(scope, receive, send)
        elif scope["type"] == "http" and (scope["path"] == MCP_PATH or scope["path"].startswith(MCP_PATH + "/")):
            await guarded(scope, receive, send)
        else:
            await django_application(scope, receive, send)

    return application


class _RequestMeta:
    """The two things ``identity.authentication.request_context`` reads from a request, for an ASGI scope."""

    def __init__(self, scope: Scope) -> None:
        headers = Headers(scope=scope)
        client = scope.get("client")
        self.META = {
            "REMOTE_ADDR": client[0] if client else "",
            "HTTP_X_PHIGATE_SESSION": headers.get("x-phigate-session", ""),
        }


def caller_of_request(request: Any) -> Caller:
    """The caller of a tool over HTTP: the principal the guard authenticated for this very POST."""
    principal = request.scope[PRINCIPAL_KEY]
    return Caller(principal, request_context(_RequestMeta(request.scope), front="mcp", principal=principal))


class BearerGuard:
    keyword = "Bearer"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._guard(scope, receive, send)
        except Exception as exc:  # before the tool runs: the token check or its audit could not reach a dependency
            dependency = outages.outage_of(exc)
            if dependency is None:
                raise
            faults.dependency(dependency).down(exc)
            await _answer(send, 503, outages.json_body(dependency), headers=outages.retry_after())

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        if not _host_allowed(headers.get("host", "")):
            await _answer(send, 400, {"error": "invalid_request", "error_description": "host not allowed"})
            return
        header = headers.get("authorization", "")
        if not header:  # as on the API: nothing presented, nothing to audit
            await _unauthorized(send, "expected 'Authorization: Bearer <agent token>'")
            return
        scheme, _, token = header.partition(" ")
        if scheme != self.keyword or not token.strip():
            await anyio.to_thread.run_sync(_audit_failure, scope, "malformed Authorization header", None)
            await _unauthorized(send, "expected 'Authorization: Bearer <agent token>'")
            return
        principal = await anyio.to_thread.run_sync(_principal, token.strip())
        if principal is None:
            await anyio.to_thread.run_sync(_audit_failure, scope, "unknown, revoked or expired token", None)
            await _unauthorized(send, "invalid token")
            return
        if not principal.is_agent:
            await anyio.to_thread.run_sync(_audit_failure, scope, "MCP is for agent tokens", principal)
            body = {"error": "insufficient_scope", "error_description": "MCP is for agent tokens, not personal ones"}
            await _answer(send, 403, body, www_authenticate=f'{self.keyword} error="insufficient_scope"')
            return
        authenticated = {**scope, PRINCIPAL_KEY: principal}
        await self.app(authenticated, receive, _answering_outages(send, authenticated))


def _answering_outages(send: Send, scope: Scope) -> Send:
    """The SDK answers a failed tool call with an error result (HTTP 200). When the failure was an outage of Redis
    or the control plane (the tool marked it in the scope, gateway.mcp.server), the client gets a JSON 503 with
    Retry-After instead, as on the API."""
    replaced = False

    async def send_or_replace(message: Message) -> None:
        nonlocal replaced
        if message["type"] == "http.response.start" and scope.get(OUTAGE_KEY):
            replaced = True
            await _answer(send, 503, outages.json_body(scope[OUTAGE_KEY]), headers=outages.retry_after())
            return
        if not replaced:
            await send(message)

    return send_or_replace


def _host_allowed(host: str) -> bool:
    allowed = settings.ALLOWED_HOSTS or ([".localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    domain, _ = split_domain_port(host)
    return bool(domain) and validate_host(domain, allowed)


def _principal(token: str) -> Principal | None:
    close_old_connections()
    try:
        return principal_for_token(token)
    finally:
        close_old_connections()


def _audit_failure(scope: Scope, why: str, principal: Principal | None) -> None:
    """Like the API's: the token itself is never recorded, only that one was presented and why it failed."""
    close_old_connections()
    try:
        client = scope.get("client")
        record(
            EventKind.AUTH_FAILED,
            principal=principal,
            context=Context(front="mcp", source_address=client[0] if client else None),
            outcome=Outcome.FAILURE,
            summary=f"MCP request {scope.get('method', '')} {scope.get('path', '')}: {why}",
            details={"reason": why},
        )
    finally:
        close_old_connections()


async def _unauthorized(send: Send, description: str) -> None:
    body = {"error": "invalid_token", "error_description": description}
    await _answer(send, 401, body, www_authenticate='Bearer error="invalid_token"')


async def _answer(
    send: Send, status: int, body: dict[str, str], www_authenticate: str = "", headers: dict[str, str] | None = None
) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if www_authenticate:
        raw_headers.append((b"www-authenticate", www_authenticate.encode()))
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
