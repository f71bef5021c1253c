"""A small client for the few Slack Web API methods phigate uses, over httpx.

Errors are split by what a caller should do: SlackUnavailable (network, HTTP 5xx, rate limits) is worth retrying;
SlackError (Slack answered ``ok: false`` for a reason that will not change) is not. Messages name the method and
Slack's error code only: never the token, a response_url or message content.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from approvals.slack import config

# httpx logs every request's full URL at INFO; a response_url is itself a credential (it lets anyone answer
# in the clicker's name for 30 minutes), so only its warnings are kept.
logging.getLogger("httpx").setLevel(logging.WARNING)

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
_TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "service_unavailable", "fatal_error", "internal_error", "request_timeout"}
)


class SlackError(Exception):
    """Slack refused the call (``ok: false``); retrying the same call will not help."""


class SlackUnavailable(Exception):
    """Slack could not be reached or asked us to come back later; retry with backoff."""


def _decode(what: str, response: httpx.Response) -> dict[str, Any]:
    if response.status_code == 429 or response.status_code >= 500:
        raise SlackUnavailable(f"{what}: HTTP {response.status_code}")
    if response.status_code >= 400:
        raise SlackError(f"{what}: HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        # response_url answers plain "ok"; anything else that is not JSON is Slack having a bad moment.
        if response.text.strip() == "ok":
            return {"ok": True}
        raise SlackUnavailable(f"{what}: answer is not JSON") from None
    if not isinstance(body, dict):
        raise SlackUnavailable(f"{what}: unexpected answer")
    if not body.get("ok"):
        error = str(body.get("error", "unknown_error"))[:64]
        if error in _TRANSIENT_ERRORS:
            raise SlackUnavailable(f"{what}: {error}")
        raise SlackError(f"{what}: {error}")
    return body


class SlackClient:
    """One bot token; the base URL is ``SLACK_API_URL`` (tests point it at a local receiver)."""

    def __init__(self, token: str, *, base_url: str | None = None, timeout: httpx.Timeout | float = TIMEOUT) -> None:
        self._token = token
        self._base_url = base_url or config.api_url()
        self._timeout = timeout

    def _post(self, method: str, *, json: dict[str, Any] | None = None, form: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            with httpx.Client(timeout=self._timeout, follow_redirects=False) as http:
                if json is not None:
                    response = http.post(self._base_url + method, json=json, headers=headers)
                else:
                    response = http.post(self._base_url + method, data=form or {}, headers=headers)
        except httpx.HTTPError as exc:
            raise SlackUnavailable(f"{method}: {type(exc).__name__}") from None
        return _decode(method, response)

    def post_message(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None) -> tuple[str, str]:
        """chat.postMessage; returns (channel id, ts), the address chat.update needs."""
        payload: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False, "unfurl_media": False}
        if blocks is not None:
            payload["blocks"] = blocks
        body = self._post("chat.postMessage", json=payload)
        return str(body.get("channel") or channel), str(body.get("ts", ""))

    def update_message(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]) -> None:
        self._post("chat.update", json={"channel": channel, "ts": ts, "text": text, "blocks": blocks})

    def post_ephemeral(self, channel: str, user: str, text: str) -> None:
        self._post("chat.postEphemeral", json={"channel": channel, "user": user, "text": text})

    def user_info(self, user_id: str) -> dict[str, Any]:
        """users.info (a form-encoded method); the profile email needs the ``users:read.email`` scope."""
        user = self._post("users.info", form={"user": user_id}).get("user")
        return user if isinstance(user, dict) else {}


def respond(response_url: str, text: str, *, timeout: httpx.Timeout | float = TIMEOUT) -> None:
    """Reply through an interaction's response_url: ephemeral, seen only by the person who clicked.

    The URL is itself the credential (no bot token is sent), and only Slack's hooks host is ever called.
    """
    if not config.response_url_allowed(response_url):
        raise SlackError("response_url: not a Slack hooks URL")
    payload = {"response_type": "ephemeral", "replace_original": False, "text": text}
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as http:
            response = http.post(response_url, json=payload)
    except httpx.HTTPError as exc:
        raise SlackUnavailable(f"response_url: {type(exc).__name__}") from None
    _decode("response_url", response)
