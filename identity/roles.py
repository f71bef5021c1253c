"""Roles are Django groups with fixed names, created by a migration; membership is the whole model."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.db import models


class Role(models.TextChoices):
    REVIEWER = "reviewer", "Reviewer"
    COMPLIANCE = "compliance", "Compliance officer"
    ENGINEER = "engineer", "Engineer"
    ADMIN = "admin", "Administrator"


def has_role(user: User | AnonymousUser | None, role: Role) -> bool:
    if not isinstance(user, User) or not user.is_active:
        return False
    return user.groups.filter(name=role.value).exists()


def roles_of(user: User | AnonymousUser | None) -> frozenset[Role]:
    """Every role the user holds, in one query (for pages that decide several things by role)."""
    if not isinstance(user, User) or not user.is_active:
        return frozenset()
    names = user.groups.filter(name__in=Role.values).values_list("name", flat=True)
    return frozenset(Role(name) for name in names)


def grant_role(user: User, role: Role) -> None:
    from django.contrib.auth.models import Group

    group, _ = Group.objects.get_or_create(name=role.value)
    user.groups.add(group)


class RoleRequired(PermissionDenied):
    """A refusal that names the role which would have allowed it; the 403 page tells the person which one."""

    def __init__(self, role: Role, message: str = "") -> None:
        super().__init__(message or f"this page is for the {role.label.lower()} role")
        self.role = role


def require_role(user: User | AnonymousUser | None, role: Role, message: str = "") -> None:
    """Refuse (403, naming the role) unless the user holds the role."""
    if not has_role(user, role):
        raise RoleRequired(role, message)
