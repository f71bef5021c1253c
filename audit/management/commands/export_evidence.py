"""``manage.py export_evidence --since DATE --until DATE [--user U] [--datasource D] --out FILE.zip``."""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.timezone import make_aware

from audit.evidence import ExportFilters, export_evidence


def moment(raw: str, name: str) -> datetime:
    """An ISO date (midnight UTC) or date-time (UTC unless it says otherwise)."""
    parsed = parse_datetime(raw)
    if parsed is None:
        day = parse_date(raw)
        if day is None:
            raise CommandError(f"--{name}: expected an ISO 8601 date or date-time, got {raw!r}")
        parsed = datetime.combine(day, time.min)
    return parsed if parsed.tzinfo else make_aware(parsed)


class Command(BaseCommand):
    help = "Write an evidence bundle (ZIP) that python -m audit.verify checks offline."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--since", required=True, help="start of the period (inclusive)")
        parser.add_argument("--until", required=True, help="end of the period (exclusive)")
        parser.add_argument("--user", help="only events whose accountable human is this username")
        parser.add_argument("--datasource", help="only events about this data source")
        parser.add_argument("--out", required=True, help="the ZIP file to write")

    def handle(self, *args: Any, **options: Any) -> None:
        filters = ExportFilters(
            since=moment(options["since"], "since"),
            until=moment(options["until"], "until"),
            user=options["user"],
            datasource=options["datasource"],
        )
        if filters.until <= filters.since:
            raise CommandError("--until must be after --since")
        result = export_evidence(filters, Path(options["out"]), requested_by=None)
        self.stdout.write(
            f"wrote {result.path}: {result.events} events, {result.links} chain links; chain {result.chain_status}"
        )
        if not result.chain_ok:
            raise CommandError("the bundle was written, but the audit chain did not verify", returncode=1)
