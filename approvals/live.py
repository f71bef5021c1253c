"""Live updates for browsers: every ticket change is broadcast on the Channels layer (Redis).

The message is only a nudge carrying the ticket id and status; the browser re-reads what it may see through
an ordinary, access-checked page fragment. A lost message costs a stale row until the next change, never a
wrong one, and a broken channel layer never blocks a decision (the caller's transaction has committed).
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

TICKETS_GROUP = "tickets"


def broadcast_ticket_change(ticket_id: int, status: str) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        message = {"type": "ticket.changed", "ticket": ticket_id, "status": status}
        async_to_sync(layer.group_send)(TICKETS_GROUP, message)
    except Exception:  # a UI nudge must never break the transition that already committed
        log.warning("could not broadcast the change of ticket %s to live pages", ticket_id)
