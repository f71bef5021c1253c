"""A strict Content-Security-Policy on every response of the web process.

Why: a reviewer's browser session can approve a write. Any markup that reaches a page unescaped (a reflected
filter, a stored SQL text, an agent's name) must stay inert, so the browser is told to run only scripts and
styles served as files by this origin: no inline ``<script>``, no ``on…=`` handlers, no ``style="…"``, no
``javascript:`` URLs, no ``eval``. Page code lives in ``static/`` and gets its data from ``json_script`` or
``data-*`` attributes. Sockets may go only to this host (the live queue and ticket pages).

The policy is set here, last, over whatever a view set: no page can loosen it. ``X-Content-Type-Options``,
``Referrer-Policy`` and ``X-Frame-Options`` come from Django's SecurityMiddleware and XFrameOptionsMiddleware
(settings ``SECURE_CONTENT_TYPE_NOSNIFF``, ``SECURE_REFERRER_POLICY``, ``X_FRAME_OPTIONS``).
"""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponseBase

HEADER = "Content-Security-Policy"

_FIXED_DIRECTIVES = (
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
    "form-action 'self'",
)


def content_security_policy(request: HttpRequest) -> str:
    """The policy for one response: the fixed directives, and websockets to this request's own host only.

    ``'self'`` does not cover ``ws:``/``wss:`` in every browser, so the host is named; it is the host Django
    validated against ``ALLOWED_HOSTS`` (a request with any other Host gets 400 and no socket source at all).
    """
    try:
        host = request.get_host()
    except DisallowedHost:
        host = ""
    sockets = f" ws://{host} wss://{host}" if host else ""
    return "; ".join((*_FIXED_DIRECTIVES, f"connect-src 'self'{sockets}"))


class ContentSecurityPolicyMiddleware:
    """Sets the Content-Security-Policy header on every response (HTML, JSON, files and error pages alike)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        response[HEADER] = content_security_policy(request)
        return response
