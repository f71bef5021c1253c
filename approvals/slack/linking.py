"""Which phigate user a Slack user is: links made by a confirmed email match or by the user while signed in.

Two ways, both verified:
- **email**: Slack says the address is confirmed, the Slack user is in the configured workspace
  (``SLACK_TEAM_ID``; without it this way is off), and exactly one active phigate account has that address.
- **explicit**: an unlinked click gets a one-time, signed, ten-minute URL naming the Slack user; the person
  opens it signed in to phigate and confirms with a POST. The token only says which Slack user clicked; the
  phigate account is always whoever is signed in.

Every link and unlink is an audit event; tokens never are.
"""

from __future__ import annotations

import hashlib
import logging
from urllib.parse import urlencode

import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.core import signing
from django.db import IntegrityError, transaction
from django.urls import reverse

from approvals.notify import redis_client
from approvals.slack import config
from approvals.slack.client import SlackClient, SlackError, SlackUnavailable
from approvals.slack.models import SlackLink, VerifiedBy
from audit.models import EventKind, Outcome
from audit.recorder import Context, record
from identity.principal import Principal

log = logging.getLogger(__name__)

LINK_SALT = "phigate.slack.link"
LINK_MAX_AGE_SECONDS = 600
USER_INFO_TIMEOUT_SECONDS = 3.0  # inside Slack's three seconds for answering an interaction


class LinkRefused(Exception):
    """The link cannot be made; the message is safe to show to the signed-in user."""


def link_token(slack_user_id: str, slack_team_id: str) -> str:
    return signing.dumps({"u": slack_user_id, "t": slack_team_id}, salt=LINK_SALT)


def link_url(slack_user_id: str, slack_team_id: str) -> str:
    query = urlencode({"token": link_token(slack_user_id, slack_team_id)})
    return f"{settings.PUBLIC_URL}{reverse('slack-link')}?{query}"


def read_link_token(token: str) -> tuple[str, str]:
    """(Slack user id, team id) from a link token, or LinkRefused if it is expired, altered or not ours."""
    try:
        data = signing.loads(token, salt=LINK_SALT, max_age=LINK_MAX_AGE_SECONDS)
    except signing.SignatureExpired:
        raise LinkRefused("this link has expired; click a phigate button in Slack again for a new one") from None
    except signing.BadSignature:
        raise LinkRefused("this link is not valid") from None
    if not isinstance(data, dict) or not isinstance(data.get("u"), str) or not isinstance(data.get("t"), str):
        raise LinkRefused("this link is not valid")
    if not config.team_allowed(data["t"]):
        raise LinkRefused("that Slack workspace is not connected to phigate")
    return data["u"], data["t"]


def _use_once(token: str) -> None:
    key = "phigate:slack:link-used:" + hashlib.sha256(token.encode()).hexdigest()
    try:
        first = redis_client().set(key, b"1", nx=True, ex=LINK_MAX_AGE_SECONDS + 60)
    except redis.RedisError:
        raise LinkRefused("linking is unavailable right now; try again in a minute") from None
    if not first:
        raise LinkRefused("this link was already used")


def _describe(link: SlackLink) -> dict[str, str]:
    return {"slack_user_id": link.slack_user_id, "slack_team_id": link.slack_team_id, "verified_by": link.verified_by}


def _create(user: User, slack_user_id: str, slack_team_id: str, verified_by: VerifiedBy, context: Context) -> SlackLink:
    """Create the link and its audit event together; the unique constraints settle any race."""
    with transaction.atomic():
        if SlackLink.objects.filter(user=user).exists():
            raise LinkRefused("your phigate account is already linked to a Slack user; unlink it first")
        if SlackLink.objects.filter(slack_user_id=slack_user_id).exists():
            raise LinkRefused("that Slack user is already linked to a phigate account")
        try:
            with transaction.atomic():
                link = SlackLink.objects.create(
                    user=user, slack_user_id=slack_user_id, slack_team_id=slack_team_id, verified_by=verified_by
                )
        except IntegrityError:
            raise LinkRefused("this Slack user or phigate account was linked meanwhile") from None
        how = "a confirmed email match" if verified_by == VerifiedBy.EMAIL else "confirmation while signed in"
        record(
            EventKind.ACCOUNT_LINKED,
            principal=Principal(human=user),
            context=context,
            summary=f"Slack user {slack_user_id} ({slack_team_id}) linked to {user.get_username()} by {how}",
            details={"slack_link": _describe(link)},
        )
    return link


def link_explicitly(user: User, token: str, context: Context) -> SlackLink:
    """The signed-in ``user`` confirms that the Slack user named by ``token`` is them."""
    try:
        slack_user_id, slack_team_id = read_link_token(token)
        _use_once(token)
        return _create(user, slack_user_id, slack_team_id, VerifiedBy.EXPLICIT, context)
    except LinkRefused as exc:
        record(
            EventKind.AUTH_FAILED,
            principal=Principal(human=user),
            context=context,
            outcome=Outcome.DENIED,
            summary=f"Slack link refused: {exc}",
            details={"reason": str(exc)},
        )
        raise


def unlink(user: User, context: Context) -> bool:
    with transaction.atomic():
        link = SlackLink.objects.select_for_update().filter(user=user).first()
        if link is None:
            return False
        described = _describe(link)
        link.delete()
        record(
            EventKind.ACCOUNT_UNLINKED,
            principal=Principal(human=user),
            context=context,
            summary=f"Slack user {described['slack_user_id']} unlinked from {user.get_username()}",
            details={"slack_link": described},
        )
    return True


def link_by_email(slack_user_id: str, slack_team_id: str, context: Context) -> SlackLink | None:
    """Link an unlinked Slack user whose confirmed Slack email belongs to exactly one active phigate account.

    Returns None whenever any condition is not met, or Slack cannot be asked: the caller then offers the
    explicit link instead.
    """
    if not settings.SLACK_TEAM_ID or slack_team_id != settings.SLACK_TEAM_ID or not config.enabled():
        return None
    try:
        client = SlackClient(config.default_bot_token(), timeout=USER_INFO_TIMEOUT_SECONDS)
        info = client.user_info(slack_user_id)
    except (SlackError, SlackUnavailable) as exc:
        log.info("no email link for a Slack user: %s", exc)
        return None
    profile = info.get("profile") if isinstance(info.get("profile"), dict) else {}
    email = str((profile or {}).get("email") or "").strip()
    if (
        not email
        or info.get("id") != slack_user_id
        or info.get("team_id") != slack_team_id
        or info.get("is_email_confirmed") is not True
        or info.get("deleted")
        or info.get("is_bot")
    ):
        return None
    matches = list(User.objects.filter(is_active=True, email__iexact=email)[:2])
    if len(matches) != 1:
        return None
    try:
        return _create(matches[0], slack_user_id, slack_team_id, VerifiedBy.EMAIL, context)
    except LinkRefused:
        return None  # that phigate account is already linked to another Slack user: no silent re-link
