"""``manage.py verify_audit``: exit 0 when the whole audit chain verifies, 1 naming the first bad event."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.chain import extend_chain, verify_chain


class Command(BaseCommand):
    help = "Verify the audit hash chain and its signed checkpoints."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--no-extend",
            action="store_true",
            help="verify only what is already chained (by default, finished events are chained first when "
            "this process holds the signing key)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.AUDIT_SIGNING_KEY and not options["no_extend"]:
            extend_chain()
        verdict = verify_chain()
        if not verdict.ok:
            raise CommandError(f"audit chain FAILED: {verdict.problem}", returncode=1)
        self.stdout.write(f"audit chain OK: {verdict.links} events, {verdict.checkpoints} signed checkpoints")
