"""The web application behind a strict Content-Security-Policy, for browser tests of pages that must work under it.

Every HTTP response gets the policy in ``TEST_CSP`` (replacing any the site sends), from a real server: the
browser enforces it exactly as it would the site's own header. Started like the web process:
``uvicorn tests.csp_asgi:application``.
"""

from __future__ import annotations

import os
from typing import Any

from phigate.asgi import application as site

POLICY = os.environ["TEST_CSP"].encode()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        await site(scope, receive, send)
        return

    async def with_policy(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-security-policy"]
            message = {**message, "headers": [*headers, (b"content-security-policy", POLICY)]}
        await send(message)

    await site(scope, receive, with_policy)
