"""``manage.py discover_phi --datasource D [--sample N] [--out F]``: propose PHI tags as a reviewable policy diff.

Runs where the data source's read-only credential is (the gateway's environment). Prints a unified diff between
the current policy and the proposed one, and why each column was proposed. Nothing is applied: review the file
written with --out, then ``manage.py policy import``.

The proposal also lists every scanned table under ``classified``: importing it says a person reviewed each of
those tables (tagged columns hold PHI, the others none), which is what lets agents read them. Remove a table
from the list to keep it held for agents until someone has looked at it.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import psycopg
from django.core.management.base import BaseCommand, CommandError, CommandParser
from psycopg import sql

from policy.credentials import Access, target_url
from policy.discovery import ColumnInfo, Proposal, propose
from policy.document import dump, export_document
from policy.models import DataSource

# pg_constraint, not information_schema.table_constraints: the latter hides constraints from a role that only
# has SELECT, which is exactly the read-only role this runs as.
_COLUMNS = """
SELECT c.table_schema, c.table_name, c.column_name, c.data_type,
       EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k
               JOIN pg_catalog.pg_class r ON r.oid = k.conrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
               WHERE n.nspname = c.table_schema AND r.relname = c.table_name AND k.contype = 'f') AS has_fk
FROM information_schema.columns c
JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
WHERE t.table_type = 'BASE TABLE'
  AND c.table_schema NOT IN ('pg_catalog', 'information_schema', 'phigate')
ORDER BY c.table_schema, c.table_name, c.ordinal_position
"""


class Command(BaseCommand):
    help = "Scan a data source and propose PHI tags (printed as a policy diff; nothing is applied)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--datasource", required=True)
        parser.add_argument("--sample", type=int, default=200, help="values sampled per text column")
        parser.add_argument("--out", help="write the proposed policy YAML here, for review and import")

    def handle(self, *args: Any, **options: Any) -> None:
        datasource = DataSource.objects.filter(name=options["datasource"]).first()
        if datasource is None:
            raise CommandError(f"no data source named {options['datasource']!r}")
        proposals, scanned = self._scan(target_url(datasource.name, Access.READ), options["sample"])
        current = export_document(datasource)
        known = {(c["table"], c["column"]) for c in current["columns"]}
        proposed = dict(current)
        new = [p for p in proposals if (f"{p.schema}.{p.table}", p.column) not in known]
        proposed["columns"] = sorted(
            [
                *current["columns"],
                *({"table": f"{p.schema}.{p.table}", "column": p.column, "type": str(p.phi_type)} for p in new),
            ],
            key=lambda c: (c["table"], c["column"]),
        )
        proposed["classified"] = sorted(set(current["classified"]) | scanned)
        for proposal in proposals:
            state = "new" if proposal in new else "already tagged"
            self.stdout.write(
                f"{proposal.schema}.{proposal.table}.{proposal.column}: {proposal.phi_type} ({proposal.why}; {state})"
            )
        self.stdout.write(
            "".join(
                difflib.unified_diff(
                    dump(current).splitlines(keepends=True),
                    dump(proposed).splitlines(keepends=True),
                    fromfile=f"{datasource.name} (current)",
                    tofile=f"{datasource.name} (proposed)",
                )
            )
        )
        if options["out"]:
            Path(options["out"]).write_text(dump(proposed), encoding="utf-8")
            self.stdout.write(f"proposed policy written to {options['out']}; review it, then: manage.py policy import")

    def _scan(self, url: str, sample: int) -> tuple[list[Proposal], set[str]]:
        """Proposed tags, and every table scanned (as schema.table)."""
        proposals = []
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = on")
            columns = [ColumnInfo(s, t, c, d, references_person=bool(fk)) for s, t, c, d, fk in conn.execute(_COLUMNS)]
            for column in columns:
                samples: list[str | None] = []
                if column.data_type in {"text", "character varying", "character"}:
                    query = sql.SQL("SELECT {col}::text FROM {tab} TABLESAMPLE SYSTEM (10) LIMIT %s").format(
                        col=sql.Identifier(column.column), tab=sql.Identifier(column.schema, column.table)
                    )
                    samples = [row[0] for row in conn.execute(query, (sample,))]
                    if len(samples) < min(sample, 20):  # small tables: TABLESAMPLE may return too little
                        query = sql.SQL("SELECT {col}::text FROM {tab} LIMIT %s").format(
                            col=sql.Identifier(column.column), tab=sql.Identifier(column.schema, column.table)
                        )
                        samples = [row[0] for row in conn.execute(query, (sample,))]
                proposal = propose(column, samples)
                if proposal is not None:
                    proposals.append(proposal)
        return proposals, {f"{column.schema}.{column.table}" for column in columns}
