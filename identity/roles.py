"""Roles are Django groups with fixed names, created by a migration; membership is the whole model."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
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


def grant_role(user: User, role: Role) -> None:
    from django.contrib.auth.models import Group

    group, _ = Group.objects.get_or_create(name=role.value)
    user.groups.add(group)
