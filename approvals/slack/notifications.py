"""What phigate sends to Slack, as plain functions (Celery tasks in approvals.slack.tasks wrap them).

Each function reads the ticket's current state when it runs, so a late or repeated delivery still shows the truth.
They raise SlackUnavailable when a retry could help; anything else is logged and dropped: a notification is never
worth failing a decision for, and decisions never wait for one.
"""

from __future__ import annotations

import hashlib
import json
import logging

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from approvals.models import Status, Ticket
from approvals.slack import blocks, config
from approvals.slack.client import SlackClient, respond
from approvals.slack.models import SlackChannel, SlackLink, SlackMessage

log = logging.getLogger(__name__)

# pg_advisory_xact_lock(class, object): one sync per ticket at a time, so a message is posted once and updates
# land in order. The two-key form lives apart from the single-key locks the audit sequencer takes.
_LOCK_CLASS = 0x51AC


def _ticket(ticket_id: int) -> Ticket | None:
    return Ticket.objects.select_related("datasource", "owner", "agent").filter(pk=ticket_id).first()


def _channel_for(ticket: Ticket) -> tuple[str, str] | None:
    """(channel, bot token variable) for the ticket's data source, or the default channel, or None."""
    configured = SlackChannel.objects.filter(datasource_id=ticket.datasource_id).first()
    if configured is not None:
        return configured.channel, configured.bot_token_env
    default = str(settings.SLACK_DEFAULT_CHANNEL or "")
    return (default, "") if default else None


def _digest(message: blocks.Message) -> str:
    return hashlib.sha256(json.dumps([message.text, message.blocks], sort_keys=True).encode()).hexdigest()


def sync_ticket_message(ticket_id: int) -> str:
    """Make the ticket's channel message show its current state: post it the first time, then chat.update.

    Returns what happened ("posted", "updated", "unchanged", or why nothing was sent).
    """
    if not config.enabled():
        return "disabled"
    ticket = _ticket(ticket_id)
    if ticket is None:
        return "no such ticket"
    target = _channel_for(ticket)
    if target is None:
        return "no channel"
    channel, token_env = target
    client = SlackClient(config.bot_token_from_env(token_env))
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LOCK_CLASS, ticket_id & 0x7FFFFFFF])
        ticket.refresh_from_db()
        reviews = list(ticket.reviews.select_related("reviewer"))
        message = blocks.ticket_message(ticket, reviews)
        digest = _digest(message)
        existing = SlackMessage.objects.filter(ticket_id=ticket_id).first()
        if existing is None:
            if ticket.status != Status.PENDING:
                return "decided before it was posted"  # nobody needs buttons for it any more
            posted_channel, ts = client.post_message(channel, message.text, message.blocks)
            SlackMessage.objects.create(ticket=ticket, channel=posted_channel, ts=ts, rendered_sha256=digest)
            return "posted"
        if existing.rendered_sha256 == digest:
            return "unchanged"
        client.update_message(existing.channel, existing.ts, message.text, message.blocks)
        SlackMessage.objects.filter(pk=existing.pk).update(rendered_sha256=digest, updated_at=timezone.now())
        return "updated"


def tell_owner(ticket_id: int, text: str) -> str:
    """Direct message to the ticket's owner, if they linked a Slack account."""
    if not config.enabled():
        return "disabled"
    link = SlackLink.objects.active().filter(user__requested_tickets=ticket_id).first()
    if link is None:
        return "owner not linked"
    SlackClient(config.default_bot_token()).post_message(link.slack_user_id, text)
    return "told"


def tell_owner_about(ticket_id: int, status: str) -> str:
    """The owner's notice for one transition; skipped when the ticket has already moved on (the later
    transition's notice says more, and the owner should not hear "approved" after "executed")."""
    ticket = _ticket(ticket_id)
    if ticket is None:
        return "no such ticket"
    if ticket.status != status:
        return "superseded"
    return tell_owner(ticket_id, blocks.owner_notice(ticket, list(ticket.reviews.select_related("reviewer"))))


def reply(response_url: str, text: str, *, channel: str = "", user: str = "") -> str:
    """An ephemeral answer to the person who clicked: through the response_url, else chat.postEphemeral."""
    if response_url and config.response_url_allowed(response_url):
        respond(response_url, text)
        return "replied"
    if channel and user and config.enabled():
        SlackClient(config.default_bot_token()).post_ephemeral(channel, user, text)
        return "replied ephemerally"
    return "nowhere to reply"
