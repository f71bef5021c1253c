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
        """Roles, and the approver groups the policy names ("dba", "security"), follow the claim; any other
        group the provider sends is ignored, and groups we manage but the claim omits are taken away."""
        from policy.models import ApproverRule

        claimed = {str(name) for name in claims.get(str(settings.OIDC_GROUPS_CLAIM)) or []}
        approver_groups = set(ApproverRule.groups.through.objects.values_list("group__name", flat=True))
        managed = Group.objects.filter(name__in={role.value for role in Role} | approver_groups)
        user.groups.remove(*[group for group in managed if group.name not in claimed])
        user.groups.add(*[group for group in managed if group.name in claimed])
