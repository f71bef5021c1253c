"""``manage.py purge_audit [--before DATE] [--dry-run]``: drop audit events past the retention period."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.management.commands.export_evidence import moment
from audit.retention import RetentionRefused, purge


class Command(BaseCommand):
    help = "Purge audit events older than the retention period (six years by default), keeping the chain verifiable."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--before", help="cut-off date (default: AUDIT_RETENTION_DAYS ago); never younger")
        parser.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        before = moment(options["before"], "before") if options["before"] else None
        try:
            result = purge(before, dry_run=options["dry_run"])
        except RetentionRefused as exc:
            raise CommandError(f"refused: {exc}") from exc
        verb = "would purge" if options["dry_run"] else "purged"
        self.stdout.write(
            f"{verb} {result.events} events older than {result.cutoff:%Y-%m-%d} "
            f"(chain through seq {result.through_seq})"
        )
