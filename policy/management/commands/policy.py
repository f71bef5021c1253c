"""``manage.py policy export --datasource D [--out F]`` and ``manage.py policy import --datasource D --file F
--actor USER [--dry-run]``: the data source's whole policy as one YAML document (see policy.document)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from policy.document import PolicyError, dump, export_document, import_document
from policy.models import DataSource


class Command(BaseCommand):
    help = "Export or import a data source's policy (PHI catalog, masks, inference rules, approval thresholds)."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        export = actions.add_parser("export")
        export.add_argument("--datasource", required=True)
        export.add_argument("--out", help="file to write (default: stdout)")
        imported = actions.add_parser("import")
        imported.add_argument("--datasource", required=True)
        imported.add_argument("--file", required=True, help="policy YAML ('-' for stdin)")
        imported.add_argument("--actor", required=True, help="username of the person making the change")
        imported.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        datasource = DataSource.objects.filter(name=options["datasource"]).first()
        if datasource is None:
            raise CommandError(f"no data source named {options['datasource']!r}")
        if options["action"] == "export":
            text = dump(export_document(datasource))
            if options["out"]:
                Path(options["out"]).write_text(text, encoding="utf-8")
            else:
                self.stdout.write(text, ending="")
            return
        actor = get_user_model().objects.filter(username=options["actor"], is_active=True).first()
        if actor is None:
            raise CommandError(f"no active user named {options['actor']!r}")
        text = sys.stdin.read() if options["file"] == "-" else Path(options["file"]).read_text(encoding="utf-8")
        try:
            result = import_document(datasource.name, text, actor, dry_run=options["dry_run"])
        except PolicyError as exc:
            raise CommandError(f"invalid policy: {exc}") from None
        if result.diff:
            self.stdout.write(result.diff)
        if not result.changed:
            self.stdout.write(f"no change; policy stays at version {result.version}")
        elif options["dry_run"]:
            self.stdout.write("dry run: nothing was changed")
        else:
            self.stdout.write(f"policy of {datasource.name} is now version {result.version}")
