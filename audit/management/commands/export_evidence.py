"""``manage.py export_evidence --since DATE --until DATE [--user U] [--datasource D] --out FILE.zip``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.evidence import ExportFilters, export_evidence
from audit.periods import parse_moment


def moment(raw: str, name: str) -> datetime:
    try:
        return parse_moment(raw)
    except ValueError as exc:
        raise CommandError(f"--{name}: {exc}, got {raw!r}") from None


class Command(BaseCommand):
    help = "Write an evidence bundle (ZIP) that python -m audit.verify checks offline."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--since", required=True, help="start of the period (inclusive)")
        parser.add_argument("--until", required=True, help="end of the period (exclusive)")
        parser.add_argument("--user", help="only events whose accountable human is this username")
        parser.add_argument("--datasource", help="only events about this data source")
        parser.add_argument("--out", required=True, help="the ZIP file to write")
        parser.add_argument(
            "--reveal-literals",
            action="store_true",
            help="carry statements with their literals (may be PHI); the default masks them; the export is audited",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        filters = ExportFilters(
            since=moment(options["since"], "since"),
            until=moment(options["until"], "until"),
            user=options["user"],
            datasource=options["datasource"],
        )
        if filters.until <= filters.since:
            raise CommandError("--until must be after --since")
        result = export_evidence(
            filters, Path(options["out"]), requested_by=None, reveal_literals=options["reveal_literals"]
        )
        self.stdout.write(
            f"wrote {result.path}: {result.events} events, {result.links} chain links; chain {result.chain_status}"
        )
        if not result.chain_ok:
            raise CommandError("the bundle was written, but the audit chain did not verify", returncode=1)
