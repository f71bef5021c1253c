"""Bearer-token authentication for the HTTP API: agent tokens and personal API tokens.

``request.user`` is always the accountable human; ``request.auth`` is the Principal, which also says whether
an agent is acting. Every attempt, successful or not, is an audit event.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.db import transaction
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from audit.models import EventKind, Outcome
from audit.recorder import Context, record
from identity import tokens
from identity.models import Agent, ApiToken
from identity.principal import Principal

SESSION_HEADER = "HTTP_X_PHIGATE_SESSION"
_SESSION_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def request_context(request: Any, front: str = "http", principal: Principal | None = None) -> Context:
    return Context(
        front=front,
        source_address=request.META.get("REMOTE_ADDR") or None,
        session_id=http_session(request, front, principal),
    )


def web_context(request: Any | None) -> Context:
    """A browser request's context: the session is a digest of the Django session key (never the key)."""
    if request is None:
        return Context(front="web")
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    return Context(
        front="web",
        source_address=request.META.get("REMOTE_ADDR") or None,
        session_id=f"web:{hashlib.sha256(key.encode()).hexdigest()[:24]}" if key else "",
    )


def http_session(request: Any, front: str, principal: Principal | None = None) -> str:
    """The session an HTTP request belongs to, for replay: the client's own ``X-Phigate-Session`` when it
    sends a sane one (an agent grouping its work), otherwise one per identity per UTC day."""
    supplied = request.META.get(SESSION_HEADER, "")
    if 0 < len(supplied) <= 40 and set(supplied) <= _SESSION_CHARACTERS:
        return f"{front}:{supplied}"
    # DRF's ``request.auth`` would authenticate (and so call back here); read what authentication stored.
    principal = principal or request.__dict__.get("_auth")
    if not isinstance(principal, Principal):
        return ""
    who = f"agent-{principal.agent.pk}" if principal.agent else f"user-{principal.human.pk}"
    return f"{front}:{who}:{timezone.now():%Y%m%d}"


def principal_of(request: Request) -> Principal:
    """The Principal a view acts for; DRF's ``request.auth`` is typed loosely, this is not."""
    principal = request.auth
    if not isinstance(principal, Principal):
        raise exceptions.NotAuthenticated()
    return principal


def principal_for_token(token: str) -> Principal | None:
    """Resolve a bearer token to a usable principal, or None (unknown, revoked, expired, owner inactive)."""
    token_digest = tokens.digest(token)
    if token.startswith(tokens.AGENT_PREFIX):
        agent = Agent.objects.active().select_related("owner").filter(token_digest=token_digest).first()
        return Principal.for_agent(agent) if agent else None
    if token.startswith(tokens.USER_PREFIX):
        api_token = ApiToken.objects.active().select_related("user").filter(token_digest=token_digest).first()
        return Principal(human=api_token.user) if api_token else None
    return None


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, Principal] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme != self.keyword or not token.strip():
            self._audit_failure(request, "malformed Authorization header")
            raise exceptions.AuthenticationFailed("expected 'Authorization: Bearer <token>'")
        principal = principal_for_token(token.strip())
        if principal is None:
            self._audit_failure(request, "unknown, revoked or expired token")
            raise exceptions.AuthenticationFailed("invalid token")
        with transaction.atomic():
            record(
                EventKind.AUTH_SUCCEEDED,
                principal=principal,
                context=request_context(request, principal=principal),
                summary=f"API request {request.method} {request.path} as {principal.describe()}",
            )
        return principal.human, principal

    def authenticate_header(self, request: Request) -> str:
        return self.keyword

    @staticmethod
    def _audit_failure(request: Request, why: str) -> None:
        # The token itself is never recorded; only that one was presented and why it failed.
        record(
            EventKind.AUTH_FAILED,
            principal=None,
            context=request_context(request),
            outcome=Outcome.FAILURE,
            summary=f"API request {request.method} {request.path}: {why}",
            details={"reason": why, "at": timezone.now().isoformat()},
        )
