"""``/integrations/slack/link``: a signed-in person links (or unlinks) their own Slack account.

There is no way to name another phigate account: the link is always made for ``request.user``. The token in the
URL only says which Slack user clicked, and it is used once. Confirming takes a POST with a CSRF token, so
merely opening a link (or having it opened for you) changes nothing.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from approvals.slack import linking
from approvals.slack.models import SlackLink
from identity.authentication import web_context


def _page(request: HttpRequest, user: User, *, token: str = "", error: str = "", status: int = 200) -> HttpResponse:
    pending: tuple[str, str] | None = None
    if token and not error:
        try:
            pending = linking.read_link_token(token)
        except linking.LinkRefused as exc:
            error, status = str(exc), 400
    return render(
        request,
        "slack/link.html",
        {
            "current": SlackLink.objects.filter(user=user).first(),
            "pending": pending,
            "token": token if pending else "",
            "error": error,
        },
        status=status,
    )


@login_required
@require_http_methods(["GET", "POST"])
def link_page(request: HttpRequest) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)  # login_required
    if request.method == "GET":
        return _page(request, user, token=request.GET.get("token", ""))
    action = request.POST.get("action", "")
    if action == "unlink":
        if linking.unlink(user, web_context(request)):
            messages.success(request, "Your Slack account is no longer linked.")
        return redirect("slack-link")
    if action == "link":
        try:
            link = linking.link_explicitly(user, request.POST.get("token", ""), web_context(request))
        except linking.LinkRefused as exc:
            return _page(request, user, error=str(exc), status=400)
        messages.success(request, f"Slack user {link.slack_user_id} now acts as you in Slack.")
        return redirect("slack-link")
    return _page(request, user, error="choose link or unlink", status=400)
