"""The websocket behind the live review queue and ticket pages.

Signed-in humans subscribe; each ticket change is forwarded only to those who may see that ticket (the same
``can_view`` rule as the pages). The browser then fetches the updated fragment over plain HTTP.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from approvals.live import TICKETS_GROUP
from approvals.models import Ticket
from approvals.rules import can_view
from identity.principal import Principal


class TicketsConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        await self.channel_layer.group_add(TICKETS_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(TICKETS_GROUP, self.channel_name)

    async def ticket_changed(self, event: dict[str, Any]) -> None:
        if await self._may_see(int(event["ticket"])):
            await self.send_json({"ticket": event["ticket"], "status": event["status"]})

    @database_sync_to_async
    def _may_see(self, ticket_id: int) -> bool:
        ticket = Ticket.objects.select_related("owner", "agent").filter(pk=ticket_id).first()
        return ticket is not None and can_view(ticket, Principal(human=self.scope["user"]))
