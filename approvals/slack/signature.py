"""Slack request signatures (v0): HMAC-SHA256 over ``v0:{timestamp}:{body}`` with the app's signing secret.

A request is accepted once: within five minutes of its timestamp (either way), with a matching signature, and
only the first time its exact signed bytes arrive. The replay guard is a Redis key per accepted request (SET NX)
that lives as long as the request could still pass the clock check.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

import redis
from django.conf import settings

from approvals.notify import redis_client

VERSION = "v0"
WINDOW_SECONDS = 300
# A timestamp up to WINDOW in the future stays acceptable until WINDOW after it: remember for both spans.
REPLAY_TTL_SECONDS = 2 * WINDOW_SECONDS
TIMESTAMP_HEADER = "HTTP_X_SLACK_REQUEST_TIMESTAMP"
SIGNATURE_HEADER = "HTTP_X_SLACK_SIGNATURE"


class InvalidSignature(Exception):
    """Not validly signed (401). The message says why, without echoing anything the caller sent."""


class ReplayGuardUnavailable(Exception):
    """Redis cannot say whether this request was seen before: refuse rather than risk a replay (503)."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    base = f"{VERSION}:{timestamp}:".encode() + body
    return f"{VERSION}=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def check_signature(secret: str, timestamp: str, body: bytes, signature: str, *, now: float | None = None) -> None:
    """Raise InvalidSignature unless ``signature`` is Slack's for this timestamp and body, within the window."""
    if not secret:
        raise InvalidSignature("no signing secret is configured")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise InvalidSignature("missing or malformed timestamp")
    skew = (time.time() if now is None else now) - int(timestamp)
    if skew > WINDOW_SECONDS:
        raise InvalidSignature("timestamp older than five minutes")
    if skew < -WINDOW_SECONDS:
        raise InvalidSignature("timestamp more than five minutes in the future")
    if not hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode("utf-8", "replace")):
        raise InvalidSignature("signature does not match")


def accept_once(timestamp: str, body: bytes) -> None:
    """Remember this signed request; raise InvalidSignature if it was accepted before."""
    digest = hashlib.sha256(f"{VERSION}:{timestamp}:".encode() + body).hexdigest()
    try:
        first = redis_client().set(f"phigate:slack:seen:{digest}", b"1", nx=True, ex=REPLAY_TTL_SECONDS)
    except redis.RedisError as exc:
        raise ReplayGuardUnavailable("replay guard unavailable") from exc
    if not first:
        raise InvalidSignature("request already received (replay)")


def verify_request(headers: Mapping[str, str], body: bytes) -> None:
    """The whole check for one incoming request: headers as in ``request.META``."""
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    check_signature(str(settings.SLACK_SIGNING_SECRET or ""), timestamp, body, headers.get(SIGNATURE_HEADER, ""))
    accept_once(timestamp, body)
