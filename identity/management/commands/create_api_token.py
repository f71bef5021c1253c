"""``manage.py create_api_token --user USER``: prints a new personal API token, alone, on stdout."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from audit.models import EventKind
from audit.recorder import Context, record
from identity.models import ApiToken
from identity.principal import Principal


class Command(BaseCommand):
    help = "Create a personal API token for a human and print it (shown only once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True)
        parser.add_argument("--expires", type=int, default=None, metavar="DAYS")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["user"], is_active=True).first()
        if user is None:
            raise CommandError(f"no active user named {options['user']!r}")
        with transaction.atomic():
            api_token, token = ApiToken.issue(user=user, expires_in_days=options["expires"])
            record(
                EventKind.TOKEN_ISSUED,
                principal=Principal(human=user),
                context=Context(front="cli"),
                summary=f"personal API token issued to {user.get_username()}",
                details={"token_kind": "api", "token_id": api_token.pk},
            )
        self.stdout.write(token)
