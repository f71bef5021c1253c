from __future__ import annotations

from typing import Any

from django.conf import settings


def sign_in_options(request: Any) -> dict[str, bool]:
    return {"oidc_enabled": settings.OIDC_ENABLED, "local_login": settings.LOCAL_LOGIN}
