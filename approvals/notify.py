"""Tell waiting parties that a ticket changed, after the change commits.

Long-polling requesters (``/wait``) and, later, live UIs subscribe to ``ticket_channel(id)``. The message is
only a nudge: listeners re-read the ticket from the database, so a lost message costs latency, not truth.
"""

from __future__ import annotations

import functools
import logging

import redis
from django.conf import settings
from django.db import transaction

from approvals.live import broadcast_ticket_change
from approvals.slack import hooks as slack_hooks

log = logging.getLogger(__name__)


@functools.cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def ticket_channel(ticket_id: int) -> str:
    return f"phigate:ticket:{ticket_id}"


def publish_change(ticket_id: int, status: str) -> None:
    try:
        redis_client().publish(ticket_channel(ticket_id), status)
    except redis.RedisError:
        log.warning("could not publish change of ticket %s; waiters will see it on their next poll", ticket_id)


def publish_change_on_commit(ticket_id: int, status: str) -> None:
    transaction.on_commit(lambda: publish_change(ticket_id, status))
    transaction.on_commit(lambda: broadcast_ticket_change(ticket_id, status))
    slack_hooks.ticket_changed_on_commit(ticket_id, status)  # the ticket's Slack message and owner notice
