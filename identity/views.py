"""Sign-in pages. Local passwords exist for the demo only and are off unless LOCAL_LOGIN=True."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db import transaction
from django.dispatch import receiver
from django.http import Http404, HttpRequest, HttpResponse

from audit.models import EventKind, Outcome
from audit.recorder import record
from identity.authentication import web_context
from identity.principal import Principal


class LoginView(auth_views.LoginView):
    template_name = "identity/login.html"
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.LOCAL_LOGIN:
            raise Http404("local sign-in is disabled")
        return super().post(request, *args, **kwargs)


SIGNED_IN_AT = "phigate_signed_in_at"


def signed_in_recently(request: HttpRequest, limit_seconds: int) -> bool:
    """Whether this browser session's sign-in (not its last activity) is younger than the limit."""
    signed_in_at = request.session.get(SIGNED_IN_AT)
    return isinstance(signed_in_at, int | float) and time.time() - signed_in_at <= limit_seconds


@receiver(user_logged_in)
def _audit_sign_in(sender: Any, request: HttpRequest | None, user: Any, **_: Any) -> None:
    if request is not None and hasattr(request, "session"):
        request.session[SIGNED_IN_AT] = time.time()  # for "fresh sign-in before approving"
    with transaction.atomic():
        record(
            EventKind.AUTH_SUCCEEDED,
            principal=Principal(human=user),
            context=web_context(request),
            summary="signed in to the web UI",
        )


@receiver(user_login_failed)
def _audit_failed_sign_in(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any
) -> None:
    record(
        EventKind.AUTH_FAILED,
        principal=None,
        context=web_context(request),
        outcome=Outcome.FAILURE,
        summary="web sign-in failed",
        details={"username": str(credentials.get("username", ""))[:150]},
    )
