"""Authentication backends for interactive (browser) sign-in."""

from __future__ import annotations

from typing import Any


class NoInteractiveSignIn:
    """Used when neither OIDC nor LOCAL_LOGIN is configured: nobody can sign in to the web UI."""

    def authenticate(self, request: Any, **credentials: Any) -> None:
        return None

    def get_user(self, user_id: Any) -> None:
        return None
