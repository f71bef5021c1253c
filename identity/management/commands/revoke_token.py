"""``manage.py revoke_token --agent NAME`` or ``--user USER``: revoke an agent's token or a person's API tokens.

Revocation takes effect on the next request or connection (tokens are checked every time) and is audited.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from audit.models import EventKind
from audit.recorder import Context, record
from identity.models import Agent, ApiToken
from identity.principal import Principal


class Command(BaseCommand):
    help = "Revoke an agent's token, or every personal API token of a user."

    def add_arguments(self, parser: CommandParser) -> None:
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--agent", help="agent name")
        target.add_argument("--user", help="username whose personal API tokens are revoked")

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        with transaction.atomic():
            if options["agent"]:
                agent = Agent.objects.select_related("owner").filter(name=options["agent"]).first()
                if agent is None:
                    raise CommandError(f"no agent named {options['agent']!r}")
                # Decide once: a concurrent revocation changes nothing twice.
                if not Agent.objects.filter(pk=agent.pk, revoked_at__isnull=True).update(revoked_at=now):
                    raise CommandError(f"agent {agent.name!r} is already revoked")
                record(
                    EventKind.TOKEN_REVOKED,
                    principal=Principal.for_agent(agent),
                    context=Context(front="cli"),
                    summary=f"token of agent {agent.name} (owner {agent.owner.get_username()}) revoked",
                    details={"token_kind": "agent", "agent_id": agent.pk},
                )
                self.stdout.write(f"revoked agent {agent.name}")
                return
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"no user named {options['user']!r}")
            ids = list(ApiToken.objects.filter(user=user, revoked_at__isnull=True).values_list("pk", flat=True))
            if not ids:
                raise CommandError(f"{user.get_username()} has no unrevoked API token")
            ApiToken.objects.filter(pk__in=ids, revoked_at__isnull=True).update(revoked_at=now)
            record(
                EventKind.TOKEN_REVOKED,
                principal=Principal(human=user),
                context=Context(front="cli"),
                summary=f"{len(ids)} personal API token(s) of {user.get_username()} revoked",
                details={"token_kind": "api", "token_ids": ids},
            )
            self.stdout.write(f"revoked {len(ids)} API token(s) of {user.get_username()}")
