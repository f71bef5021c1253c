"""PHI tags follow data: an approved statement that creates or fills a relation from a query tags what it filled.

Runs in the executor, inside the statement's target transaction, after the statement and before its COMMIT
(approvals.statement_runner.run_once ``before_commit``). Order, so that a crash anywhere is harmless:

1. On the executor's own session: the filled relations' columns as PostgreSQL now names them, and a catalog
   snapshot (which already contains what the statement created) for the lineage of each source query.
2. In the control plane, committed: the inherited tags (a column's tag only ever gets stricter), the
   classification marker of a relation the statement defined with complete lineage, a policy version and one
   ``policy.changed`` event naming the ticket and every tag it added.
3. Only then the target COMMIT (by the caller). A crash between 2 and 3 leaves tags, perhaps on a relation that
   does not exist: harmless, and the same tags again when recovery runs the statement.

Gateways cache catalog snapshots for up to CATALOG_TTL_SECONDS (policy.catalog_cache). A new relation cannot be
in a snapshot older than its tags (the cache reads the control plane before the target). A relation that existed
before the statement can, with its old tags: then the COMMIT waits one TTL, so every snapshot that could show the
new rows without their tags has expired when the rows become visible.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pglast
import psycopg
from django.db import transaction
from psycopg import sql as pgsql

from approvals.models import Ticket
from audit.recorder import Context
from identity.principal import Principal
from policy.catalog_cache import CATALOG_TTL_SECONDS, masks_for, tags_for
from policy.classifier import UnparsableStatement, classify
from policy.document import export_document, record_change
from policy.lineage import ParseError, UnsupportedStatement, analyze
from policy.lineage_masking import _untrusted_functions
from policy.lineage_types import Lineage
from policy.models import ClassificationSource, ClassifiedRelation, DataSource, PhiColumn
from policy.tag_inheritance import RelationFill, relation_fills, strictest_type, tags_for_fill
from policy.target_catalog import TargetCatalog, load_target_catalog

log = logging.getLogger(__name__)

_RELATION_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relpersistence = 't'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s)
"""
_COLUMNS_SQL = """
SELECT a.attname FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""


@dataclass(frozen=True)
class ColumnTag:
    schema: str
    table: str
    column: str
    phi_type: str
    why: str
    statement: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.schema, self.table, self.column)


@dataclass
class Inheritance:
    """What one statement's fills add to the policy."""

    tags: dict[tuple[str, str, str], ColumnTag] = dataclasses.field(default_factory=dict)
    classified: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    # Existing relations whose tags change: gateway snapshots may still show them with the old ones.
    existing_relations_retagged: set[tuple[str, str]] = dataclasses.field(default_factory=set)


def tags_follow_data(ticket: Ticket) -> Callable[[psycopg.Connection], None]:
    """The ``before_commit`` step of one ticket (see the module docstring)."""

    def before_commit(session: psycopg.Connection) -> None:
        fills = relation_fills(ticket.sql)
        if not fills:
            return
        inheritance = inherit(session, ticket.datasource.name, fills, single_statement=_is_single(ticket.sql))
        if inheritance.tags or inheritance.classified:
            _commit_to_policy(ticket, inheritance)
        if inheritance.existing_relations_retagged:
            time.sleep(CATALOG_TTL_SECONDS)

    return before_commit


def _is_single(sql: str) -> bool:
    """A batch may drop, rename or recreate what an earlier statement created: only a lone statement's
    relation is known to be the one its query defined."""
    return len(pglast.parse_sql(sql)) == 1


def inherit(
    session: psycopg.Connection, datasource: str, fills: Sequence[RelationFill], *, single_statement: bool
) -> Inheritance:
    """The tags (and markers) the fills add, read on the statement's own session before its commit."""
    stored = tags_for(datasource)
    masks = masks_for(datasource)
    catalog = dataclasses.replace(load_target_catalog(session, stored), masks=masks)
    known = {(t.schema_name, t.table_name, t.column_name): t.phi_type for t in stored}
    inheritance = Inheritance()
    for fill in fills:
        if fill.temporary:
            continue  # lives and dies with the executor's session; nobody else can read it
        target = _resolve(session, fill)
        if target is None:
            continue  # a later statement of the batch dropped or renamed it: nothing left to tag here
        schema, table, relation_columns = target
        query = fill.query_text(relation_columns)
        lineage, why = _lineage(query, catalog)
        if fill.columns is not None:
            filled = list(fill.columns)
        elif fill.defines_relation or lineage is None:
            filled = list(relation_columns)
        else:
            filled = list(relation_columns[: len(lineage.outputs)])  # INSERT without a column list
        if any(column not in relation_columns for column in filled):
            lineage, filled, why = None, list(relation_columns), "a filled column is not where it was named"
        found = tags_for_fill(
            filled,
            lineage,
            known,
            masks,
            opaque_functions=_calls_opaque_functions(query, catalog),
            unknown_why=why,
        )
        for inherited in found.tags:
            key = (schema, table, inherited.column)
            before = known.get(key)
            phi_type = inherited.phi_type
            if before is not None:
                phi_type = strictest_type({before, phi_type}, masks, computed=False)
            if phi_type == before:
                continue
            known[key] = phi_type
            inheritance.tags[key] = ColumnTag(schema, table, inherited.column, phi_type, inherited.why, fill.statement)
            if fill.existed_before:
                inheritance.existing_relations_retagged.add((schema, table))
        if single_statement and fill.defines_relation and found.complete:
            inheritance.classified.add((schema, table))
    return inheritance


def _resolve(session: psycopg.Connection, fill: RelationFill) -> tuple[str, str, list[str]] | None:
    """(schema, name, columns in order) of the filled relation as the executor's session resolves its name."""
    parts = [fill.schema, fill.name] if fill.schema else [fill.name]
    written = pgsql.Identifier(*parts).as_string(session)
    row = session.execute(_RELATION_SQL, (written,)).fetchone()
    if row is None or row[3]:
        return None
    columns = [str(name) for (name,) in session.execute(_COLUMNS_SQL, (row[0],)).fetchall()]
    return str(row[1]), str(row[2]), columns


def _lineage(query: str | None, catalog: TargetCatalog) -> tuple[Lineage | None, str]:
    if query is None:
        return None, "the values do not come from a query lineage can follow"
    try:
        return analyze(query, catalog), ""
    except (ParseError, UnsupportedStatement) as error:
        return None, f"lineage unknown: {error}"


def _calls_opaque_functions(query: str | None, catalog: TargetCatalog) -> bool:
    """Whether the query calls a function whose body lineage cannot see (it could read PHI itself)."""
    if query is None:
        return False
    try:
        return bool(_untrusted_functions(classify(query, catalog.functions, relations=catalog), catalog))
    except UnparsableStatement:
        return True


def _commit_to_policy(ticket: Ticket, inheritance: Inheritance) -> None:
    """One control-plane transaction: tags, markers, a version and its audit event. Idempotent: a second run
    (recovery) finds everything in place and records nothing."""
    with transaction.atomic():
        datasource = DataSource.objects.select_for_update().get(pk=ticket.datasource_id)
        before = export_document(datasource)
        for tag in inheritance.tags.values():
            PhiColumn.objects.update_or_create(
                datasource=datasource,
                schema_name=tag.schema,
                table_name=tag.table,
                column_name=tag.column,
                defaults={"phi_type": tag.phi_type},
            )
        for schema, table in sorted(inheritance.classified):
            ClassifiedRelation.objects.get_or_create(
                datasource=datasource,
                schema_name=schema,
                table_name=table,
                defaults={"how": ClassificationSource.LINEAGE, "ticket_id": ticket.pk},
            )
        added = [
            {"column": ".".join(tag.key), "type": tag.phi_type, "why": tag.why, "statement": tag.statement}
            for tag in sorted(inheritance.tags.values(), key=lambda t: t.key)
        ]
        record_change(
            datasource,
            ticket.owner,
            before,
            front="worker",
            principal=Principal(human=ticket.owner, agent=ticket.agent),
            context=Context(front="worker", session_id=ticket.session_id),
            ticket_id=ticket.pk,
            summary=f"PHI tags followed the data of ticket {ticket.pk}: "
            + (", ".join(f"{t['column']} ({t['type']})" for t in added) or "no tags")
            + (
                "; classified " + ", ".join(f"{s}.{t}" for s, t in sorted(inheritance.classified))
                if inheritance.classified
                else ""
            ),
            details={
                "inherited_tags": added,
                "classified": [f"{s}.{t}" for s, t in sorted(inheritance.classified)],
            },
        )
