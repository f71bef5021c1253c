"""OIDC sign-in (mozilla-django-oidc) with roles taken from a groups claim."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from identity.roles import Role


class RoleMappingOIDCBackend(OIDCAuthenticationBackend):  # type: ignore[misc]
    """Keeps the user's role groups equal to the roles named in the provider's groups claim, at every sign-in."""

    def get_username(self, claims: dict[str, Any]) -> str:
        """The provider's preferred_username when it is a valid Django username; otherwise the library's hash
        of the email (a stable, if unreadable, name)."""
        preferred = str(claims.get("preferred_username") or "")
        if preferred and len(preferred) <= 150 and all(ch.isalnum() or ch in "@.+-_" for ch in preferred):
            return preferred
        return str(super().get_username(claims))

    def create_user(self, claims: dict[str, Any]) -> Any:
        user = super().create_user(claims)
        self._sync_roles(user, claims)
        return user

    def update_user(self, user: Any, claims: dict[str, Any]) -> Any:
        self._sync_roles(user, claims)
        return user

    def _sync_roles(self, user: Any, claims: dict[str, Any]) -> None:
        claimed = claims.get(str(settings.OIDC_GROUPS_CLAIM)) or []
        wanted = {role.value for role in Role if role.value in set(claimed)}
        role_groups = Group.objects.filter(name__in=[role.value for role in Role])
        user.groups.remove(*[group for group in role_groups if group.name not in wanted])
        user.groups.add(*[group for group in role_groups if group.name in wanted])
