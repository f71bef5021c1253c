"""ASGI entry point of the web process (``uvicorn phigate.asgi:application``): HTTP (Django) and websockets
(Channels: the live review queue and ticket pages).

The web process must never hold a target credential (non-negotiable 3): it refuses to start if one is present.
Requests under ``/mcp`` go to the MCP server for agents (gateway.mcp.http); everything else goes to Django.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application
from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "phigate.settings")

from policy.credentials import credential_variables

_present = credential_variables()
if _present:
    raise ImproperlyConfigured(
        "the web process must not hold target credentials; remove from its environment: " + ", ".join(_present)
    )

django_application = get_asgi_application()  # sets Django up before the websocket routes import models

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from approvals.consumers import TicketsConsumer  # noqa: E402
from gateway.mcp.http import with_mcp  # noqa: E402

# /mcp (the MCP server for agents) or Django; the MCP session manager also needs the lifespan events.
http_application = with_mcp(django_application)

application = ProtocolTypeRouter(
    {
        "http": http_application,
        "lifespan": http_application,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter([path("ws/tickets/", TicketsConsumer.as_asgi())]))
        ),
    }
)
