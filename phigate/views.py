"""The site's shell: where ``/`` lands each role, the branded error pages, and the API documentation page."""

from __future__ import annotations

import logging

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseServerError
from django.shortcuts import redirect, render
from django.template import loader
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework.authentication import SessionAuthentication

from approvals import queue_views
from identity.roles import RoleRequired
from phigate.navigation import Person, landing_url

logger = logging.getLogger(__name__)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """``/``: each person starts where their work is (``phigate.navigation.landing_url``).

    Reviewers get the live queue right here, at ``/`` (bookmarks, the sign-in redirect and the OIDC callback all
    end up at ``/``); the queue also has its own URL, ``/queue/``, for the navigation bar.
    """
    destination = landing_url(Person.of(request.user))
    if destination is not None:
        return redirect(destination)
    return queue_views.queue(request)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """403 with the site's navigation, and the role that would have allowed it when the refusal names one."""
    needed = exception.role.label if isinstance(exception, RoleRequired) else None
    reason = str(exception) if isinstance(exception, PermissionDenied) and str(exception) else ""
    return render(request, "errors/403.html", {"role_needed": needed, "reason": reason}, status=403)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 with the site's navigation. The path is not echoed: there is nothing useful to add to it."""
    return render(request, "errors/404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    """500, rendered without the request's context: whatever failed (the database, a context processor) must
    not fail the error page too. It still extends base.html and links back to the start."""
    try:
        return HttpResponseServerError(loader.get_template("errors/500.html").render({}))
    except Exception:  # the page of last resort must answer whatever happened
        logger.exception("the 500 page could not be rendered")
        return HttpResponseServerError("Server error", content_type="text/plain")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form sent without a valid CSRF token (typically a page left open past a new sign-in)."""
    return render(request, "errors/csrf.html", status=403)


class ApiDocsView(SpectacularSwaggerSplitView):
    """Swagger UI for ``/api/schema/``, served from this origin (drf-spectacular-sidecar, no CDN).

    The split view delivers its start-up script as a separate same-origin request (``?script``), so the page
    has no inline script and works under the site's Content-Security-Policy; the page template is ours
    (``templates/api/docs.html``), with the site's navigation and no inline style.
    """

    template_name = "api/docs.html"
    url_name = "api-schema"
    title = "phigate API"
    # The page is for people in a browser: their session shows the navigation bar. Nothing here is private
    # (the schema is public too); the API itself still takes bearer tokens only.
    authentication_classes = [SessionAuthentication]

    def _get_schema_auth_names(self) -> list[str]:
        return ["bearerAuth"]  # identity.openapi.BearerTokenScheme: what "Authorize" fills in
