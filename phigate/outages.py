"""The web process during a dependency outage: JSON 503 with Retry-After for machines, a branded 503 for people.

When Redis or the control-plane database cannot be reached, a request fails with an exception from redis-py,
kombu or the database driver. Without this module that is an HTML 500, which a client cannot tell from a bug.
Here such an exception becomes a 503 naming the dependency, with ``Retry-After``:

* API views (DRF): ``api_exception_handler`` (``REST_FRAMEWORK["EXCEPTION_HANDLER"]``) answers
  ``{"error": ..., "dependency": "redis" | "control_plane"}``;
* every other view, and a middleware that fails (a session read or save): ``DependencyOutageMiddleware``, first
  in ``MIDDLEWARE``. Paths under ``/api/``, ``/mcp`` and ``/integrations/``, and requests that ask for JSON
  rather than HTML, get the JSON; pages get ``templates/503.html``, rendered without the request (whatever
  failed must not fail the error page too);
* the MCP front is not Django: ``gateway.mcp.http`` uses ``outage_of`` and ``json_body`` directly.

Only faults of reaching a dependency count (``outage_of``): a refused connection, a timeout, a terminated backend,
a Redis that is loading or read-only, or ``Unavailable`` (another process, the gateway, reported its own
outage). A constraint violation or a syntax error is still a 500: it is a bug, and retrying will not help. Each
outage is a state change in ``phigate.faults`` (one log line per change).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import redis
from django.db import utils as db_utils
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader
from django.utils.deprecation import MiddlewareMixin
from rest_framework.response import Response
from rest_framework.views import exception_handler

from phigate import faults

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
JSON_PREFIXES = ("/api/", "/mcp", "/integrations/", "/readyz", "/healthz")
_OUTAGE_ATTRIBUTE = "_phigate_outage"
_DESCRIPTIONS = {
    faults.REDIS: "Redis",
    faults.CONTROL_PLANE: "the control-plane database",
    faults.GATEWAY: "the gateway",
}

# Connection-level SQLSTATEs: class 08 (connection exception), the server shutting down or starting up, and too
# many connections. Anything else (a constraint, a timeout of one statement, a deadlock) is not an outage.
_CONNECTION_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
_REDIS_OUTAGES: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError (a restarting Redis), MaxConnectionsError
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica during a failover
    redis.exceptions.OutOfMemoryError,
)


def _broker_errors() -> tuple[type[BaseException], ...]:
    try:
        from kombu.exceptions import OperationalError as BrokerError
    except ImportError:  # pragma: no cover - kombu comes with celery, a requirement
        return ()
    return (BrokerError,)


_BROKER_OUTAGES = _broker_errors()


class Unavailable(Exception):
    """A dependency is unavailable, as reported by another process (the gateway could not reach its control
    plane): the answer is the same 503 as for an outage seen here."""

    def __init__(self, dependency: str, message: str = "") -> None:
        super().__init__(message or f"{dependency} is unavailable")
        self.dependency = dependency


def _database_outage(error: BaseException) -> bool:
    if isinstance(error, db_utils.InterfaceError):  # "connection already closed"
        return True
    if not isinstance(error, db_utils.OperationalError):
        return False
    sqlstate = getattr(error.__cause__, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in _CONNECTION_SQLSTATES


def outage_of(error: BaseException | None) -> str | None:
    """The dependency whose unavailability caused this exception (looking through its causes), or None."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, Unavailable):
            return error.dependency
        if isinstance(error, _REDIS_OUTAGES) or (_BROKER_OUTAGES and isinstance(error, _BROKER_OUTAGES)):
            return faults.REDIS
        if _database_outage(error):
            return faults.CONTROL_PLANE
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def json_body(dependency: str) -> dict[str, str]:
    what = _DESCRIPTIONS.get(dependency, dependency)
    return {"error": f"{what} is unavailable; try again later", "dependency": dependency}


def retry_after() -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_SECONDS)}


def json_unavailable(dependency: str) -> JsonResponse:
    return JsonResponse(json_body(dependency), status=503, headers=retry_after())


def html_unavailable(dependency: str) -> HttpResponse:
    """``templates/503.html``, without the request's context (no session, no user, no database)."""
    try:
        page = loader.get_template("503.html").render({"dependency": _DESCRIPTIONS.get(dependency, dependency)})
    except Exception:  # the page of last resort answers whatever happened
        log.exception("the 503 page could not be rendered")
        return HttpResponse(
            "phigate is temporarily unavailable; try again in a moment.",
            status=503,
            content_type="text/plain",
            headers=retry_after(),
        )
    return HttpResponse(page, status=503, headers=retry_after())


def wants_json(request: HttpRequest) -> bool:
    """API paths, and clients that ask for JSON rather than a page."""
    accept = request.headers.get("Accept", "")
    return request.path.startswith(JSON_PREFIXES) or ("application/json" in accept and "text/html" not in accept)


def unavailable(request: HttpRequest, dependency: str) -> HttpResponse:
    return json_unavailable(dependency) if wants_json(request) else html_unavailable(dependency)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus: a dependency outage is a JSON 503 with Retry-After."""
    dependency = outage_of(exc)
    if dependency is None:
        return exception_handler(exc, context)
    faults.dependency(dependency).down(exc)
    return Response(json_body(dependency), status=503, headers=retry_after())


def _remember_outage(sender: object, request: HttpRequest | None = None, **kwargs: object) -> None:
    """``got_request_exception``: an exception Django is about to turn into a 500 (in any middleware or view)."""
    dependency = outage_of(sys.exc_info()[1])
    if dependency is not None and request is not None:
        setattr(request, _OUTAGE_ATTRIBUTE, dependency)
        faults.dependency(dependency).down(sys.exc_info()[1] or dependency)


class DependencyOutageMiddleware(MiddlewareMixin):
    """First in ``MIDDLEWARE``: a view's outage becomes a 503 here (``process_exception``); one inside another
    middleware (which Django has already turned into a 500) is recognised by ``got_request_exception`` and its
    500 replaced in ``process_response``. Sync and async capable (MiddlewareMixin), like Django's own."""

    def __init__(self, get_response: Any) -> None:
        from django.core.signals import got_request_exception

        super().__init__(get_response)
        got_request_exception.connect(_remember_outage, dispatch_uid="phigate.outages")

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        dependency = getattr(request, _OUTAGE_ATTRIBUTE, None)
        if dependency is not None and response.status_code == 500:
            return unavailable(request, dependency)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        dependency = outage_of(exception)
        if dependency is None:
            return None
        faults.dependency(dependency).down(exception)
        return unavailable(request, dependency)
