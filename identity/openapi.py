"""How the OpenAPI schema (drf-spectacular) describes our bearer-token authentication.

Without this, drf-spectacular cannot tell what ``BearerTokenAuthentication`` expects: the schema declared no
security scheme and every fetch of ``/api/schema/`` logged one warning per API view. Registered by
``IdentityConfig.ready`` (an extension registers itself when its class is defined).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "identity.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        definition = build_bearer_security_scheme_object(header_name="Authorization", token_prefix="Bearer")
        definition["description"] = (
            "An agent's token (pga_…) or a person's API token (pgu_…): "
            "`manage.py create_agent` / `manage.py create_api_token`."
        )
        return definition
