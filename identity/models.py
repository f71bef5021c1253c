"""Agents and personal API tokens. Humans are Django users; their roles are groups (identity.roles)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from identity import tokens
from identity.scram import make_verifier

agent_name_validator = RegexValidator(
    r"^[a-z][a-z0-9_.-]{0,62}$",
    "Agent names are lower-case letters, digits, '.', '_' or '-', starting with a letter "
    "(they are database user names).",
)


class AgentQuerySet(models.QuerySet["Agent"]):
    def active(self) -> AgentQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True, owner__is_active=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )


class Agent(models.Model):
    """An AI agent acting on behalf of exactly one human owner ("claude-code on behalf of bob")."""

    name = models.CharField(max_length=63, unique=True, validators=[agent_name_validator])
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="agents")
    token_digest = models.CharField(max_length=64, unique=True)
    # What the wire gateway checks (SCRAM-SHA-256): derived from the token at issue, never the token itself.
    scram_verifier = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = AgentQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(token_digest__regex=r"^[0-9a-f]{64}$"), name="agent_token_digest_hex"),
            models.CheckConstraint(
                condition=Q(expires_at__isnull=True) | Q(expires_at__gt=models.F("created_at")),
                name="agent_expires_after_creation",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} on behalf of {self.owner.get_username()}"

    @classmethod
    def issue(cls, *, owner: User, name: str, expires_in_days: int | None = None) -> tuple[Agent, str]:
        """Create an agent and return it with its token; the token is never retrievable again."""
        token = tokens.new_token(tokens.AGENT_PREFIX)
        now = timezone.now()
        agent = cls(
            name=name,
            owner=owner,
            token_digest=tokens.digest(token),
            scram_verifier=make_verifier(token),
            created_at=now,
            expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
        )
        agent.full_clean()
        agent.save()
        return agent, token

    def rotate_token(self) -> str:
        token = tokens.new_token(tokens.AGENT_PREFIX)
        self.token_digest = tokens.digest(token)
        self.scram_verifier = make_verifier(token)
        self.save(update_fields=["token_digest", "scram_verifier"])
        return token


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def active(self) -> ApiTokenQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True, user__is_active=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )


class ApiToken(models.Model):
    """A human's personal token for the HTTP API (reviewers and compliance officers script against it)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_tokens")
    token_digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(token_digest__regex=r"^[0-9a-f]{64}$"), name="apitoken_digest_hex"),
        ]

    @classmethod
    def issue(cls, *, user: User, expires_in_days: int | None = None) -> tuple[ApiToken, str]:
        token = tokens.new_token(tokens.USER_PREFIX)
        now = timezone.now()
        record = cls.objects.create(
            user=user,
            token_digest=tokens.digest(token),
            created_at=now,
            expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
        )
        return record, token
