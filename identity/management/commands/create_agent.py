"""``manage.py create_agent --owner USER --name NAME [--expires DAYS]``: prints the new token, alone, on stdout."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from audit.models import EventKind
from audit.recorder import Context, record
from identity.models import Agent
from identity.principal import Principal


class Command(BaseCommand):
    help = "Create an agent acting on behalf of a human owner and print its token (shown only once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--owner", required=True, help="username of the accountable human")
        parser.add_argument("--name", required=True, help="agent name (its database user name on the wire)")
        parser.add_argument("--expires", type=int, default=None, metavar="DAYS", help="token lifetime in days")

    def handle(self, *args: Any, **options: Any) -> None:
        owner = get_user_model().objects.filter(username=options["owner"], is_active=True).first()
        if owner is None:
            raise CommandError(f"no active user named {options['owner']!r}")
        if options["expires"] is not None and options["expires"] < 1:
            raise CommandError("--expires must be at least 1 day")
        try:
            with transaction.atomic():
                agent, token = Agent.issue(owner=owner, name=options["name"], expires_in_days=options["expires"])
                record(
                    EventKind.TOKEN_ISSUED,
                    principal=Principal.for_agent(agent),
                    context=Context(front="cli"),
                    summary=f"agent {agent.name} created for {owner.get_username()}",
                    details={
                        "token_kind": "agent",
                        "expires_at": agent.expires_at.isoformat() if agent.expires_at else None,
                    },
                )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(token)
