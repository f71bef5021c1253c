"""The one place ticket transitions reach Slack: called from approvals.notify.publish_change_on_commit.

Nothing happens before the change commits, nothing here can raise into the transition, and with Slack off
(no ``SLACK_BOT_TOKEN``) nothing happens at all. After commit, one small query decides whether any Slack work
exists for this ticket (a channel for its data source, or a linked owner to tell) before a task is queued.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from approvals.slack import config

log = logging.getLogger(__name__)

# The owner hears about decisions and outcomes, not about each intermediate step.
OWNER_IS_TOLD_ON = frozenset({"approved", "rejected", "expired", "executed", "failed"})


def ticket_changed_on_commit(ticket_id: int, status: str) -> None:
    if not config.enabled():
        return
    transaction.on_commit(lambda: enqueue_for_change(ticket_id, status), robust=True)


def enqueue_for_change(ticket_id: int, status: str) -> None:
    """Queue the message sync and, for decisions and outcomes, the owner's notice."""
    from approvals.models import Ticket
    from approvals.slack import tasks

    try:
        row = (
            Ticket.objects.filter(pk=ticket_id)
            .values_list("datasource__slack_channel__id", "owner__slack_link__id")
            .first()
        )
    except Exception:
        log.exception("could not look up Slack settings of ticket %s", ticket_id)
        return
    if row is None:
        return
    channel_id, owner_link_id = row
    if channel_id is not None or settings.SLACK_DEFAULT_CHANNEL:
        tasks.enqueue(tasks.sync_ticket_message_task, ticket_id)
    if owner_link_id is not None and status in OWNER_IS_TOLD_ON:
        tasks.enqueue(tasks.tell_owner_task, ticket_id, str(status))
