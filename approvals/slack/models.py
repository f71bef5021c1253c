"""Slack state kept in the control plane: who is who, where each ticket's message lives, and where to post.

Registered in the approvals app (imported by approvals.models). No secret is stored here: a data source that
posts with its own bot names the environment variable that holds the token.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class VerifiedBy(models.TextChoices):
    EMAIL = "email", "Confirmed Slack email equal to the phigate account's email"
    EXPLICIT = "explicit", "Confirmed by the user while signed in to phigate"


class SlackLinkQuerySet(models.QuerySet["SlackLink"]):
    def active(self) -> SlackLinkQuerySet:
        """A deactivated phigate account stops acting from Slack at once, without deleting its link."""
        return self.filter(user__is_active=True)

    def for_slack_user(self, slack_user_id: str, slack_team_id: str) -> SlackLinkQuerySet:
        return self.active().filter(slack_user_id=slack_user_id, slack_team_id=slack_team_id)


class SlackLink(models.Model):
    """A Slack user acting as one phigate user. One link per person on each side, enforced by the database."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="slack_link")
    slack_user_id = models.CharField(max_length=32, unique=True)
    slack_team_id = models.CharField(max_length=32)
    verified_by = models.CharField(max_length=10, choices=VerifiedBy.choices)
    created_at = models.DateTimeField(default=timezone.now)

    objects = SlackLinkQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(verified_by__in=[choice.value for choice in VerifiedBy]), name="slack_link_verified_known"
            ),
            models.CheckConstraint(
                condition=Q(slack_user_id__regex=r"^[UW][A-Z0-9]{2,31}$"), name="slack_user_id_form"
            ),
            models.CheckConstraint(
                condition=Q(slack_team_id__regex=r"^[TE][A-Z0-9]{2,31}$"), name="slack_team_id_form"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.slack_user_id} ({self.slack_team_id}) is {self.user.get_username()}"


class SlackMessage(models.Model):
    """The one channel message of a ticket, updated in place as the ticket moves."""

    ticket = models.OneToOneField("approvals.Ticket", on_delete=models.CASCADE, related_name="slack_message")
    channel = models.CharField(max_length=80)
    ts = models.CharField(max_length=32)
    # Digest of what the message shows now: a sync that would send the same blocks again sends nothing.
    rendered_sha256 = models.CharField(max_length=64)
    posted_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(ts__regex=r"^[0-9]+\.[0-9]+$"), name="slack_message_ts_form"),
            models.CheckConstraint(condition=~Q(channel=""), name="slack_message_channel_set"),
        ]

    def __str__(self) -> str:
        return f"Slack message of ticket {self.ticket_id} in {self.channel}"


class SlackChannel(models.Model):
    """Where a data source's tickets are posted (otherwise ``SLACK_DEFAULT_CHANNEL``), and with which bot.

    ``bot_token_env`` names an environment variable (``SLACK_BOT_TOKEN_<SUFFIX>``) holding that bot's token; the
    prefix is enforced so a row can never point the Slack client at another secret, such as a target credential.
    """

    datasource = models.OneToOneField("policy.DataSource", on_delete=models.CASCADE, related_name="slack_channel")
    channel = models.CharField(max_length=80)
    bot_token_env = models.CharField(max_length=80, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=~Q(channel=""), name="slack_channel_set"),
            models.CheckConstraint(
                condition=Q(bot_token_env="") | Q(bot_token_env__regex=r"^SLACK_BOT_TOKEN_[A-Z0-9_]{1,60}$"),
                name="slack_channel_token_env_form",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.datasource.name} → {self.channel}"
