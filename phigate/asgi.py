"""ASGI entry point of the web process (``uvicorn phigate.asgi:application``).

The web process must never hold a target credential (non-negotiable 3): it refuses to start if one is present.
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

application = get_asgi_application()
