"""Long polling for ticket changes (``/wait``): returns when the status moves or the timeout passes."""

from __future__ import annotations

import time

from django.conf import settings

from approvals.lifecycle import expire_if_overdue
from approvals.models import Ticket
from approvals.notify import redis_client, ticket_channel

# Re-read the ticket at least this often even without a nudge: covers expiry and a lost pub/sub message.
RECHECK_SECONDS = 1.0


def capped_timeout(seconds: float) -> float:
    """A requested wait, kept between zero and ``WAIT_TIMEOUT_MAX_SECONDS`` (shared by the API and MCP)."""
    return min(max(seconds, 0.0), float(settings.WAIT_TIMEOUT_MAX_SECONDS))


def wait_for_change(ticket: Ticket, timeout_seconds: float) -> Ticket:
    initial = ticket.status
    deadline = time.monotonic() + timeout_seconds
    pubsub = redis_client().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(ticket_channel(ticket.pk))  # subscribe before re-reading, so no change can slip between
    try:
        while True:
            ticket.refresh_from_db()
            if ticket.status == initial and expire_if_overdue(ticket):
                ticket.refresh_from_db()
            remaining = deadline - time.monotonic()
            if ticket.status != initial or remaining <= 0:
                return ticket
            pubsub.get_message(timeout=min(remaining, RECHECK_SECONDS))
    finally:
        pubsub.close()
