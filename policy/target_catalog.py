"""A snapshot of one target database's catalog, joined with its PHI tags, and the v1 masking plan built on it.

Loaded by whichever process holds a credential for the target (gateway: read-only; executor: write), never by
the web process. Snapshots are immutable, so threads share them without locks; a refresh swaps the reference.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import psycopg
from psycopg.adapt import AdaptersMap
from psycopg.types.string import TextLoader

from policy.classifier import Classification
from policy.function_catalog import SnapshotFunctionCatalog, load_function_catalog
from policy.masking import ColumnMask, MaskingPlan
from policy.models import Mask
from policy.result_values import PgType

PLAIN_TABLE_KINDS = frozenset({"r", "p"})  # ordinary and partitioned tables: origins PostgreSQL reports faithfully

# PostgreSQL's own catalogs are the relations initdb creates in pg_catalog and information_schema. initdb gives
# every object it creates an OID below this (FirstNormalObjectId in PostgreSQL's transam.h); anything created later
# in those schemas (by a superuser or an extension) is not PostgreSQL's own and gets no trust.
FIRST_NORMAL_OBJECT_ID = 16384


@dataclass(frozen=True)
class Tag:
    schema_name: str
    table_name: str
    column_name: str
    phi_type: str


@dataclass(frozen=True)
class PatientKey:
    schema_name: str
    table_name: str
    column_name: str
    key_name: str


@dataclass(frozen=True)
class TargetCatalog:
    relkinds: Mapping[int, str]  # relation oid -> relkind
    relation_oids: Mapping[str, int]  # "schema.table" and bare "table" (if unambiguous) -> oid
    tagged_columns: Mapping[tuple[int, int], Tag]  # (relation oid, attnum) -> tag
    tagged_relations: frozenset[int]
    functions: SnapshotFunctionCatalog
    # Whether the control plane still serves this data source; cached decisions die with it.
    datasource_active: bool = True
    # (phi_type, identity kind) -> mask: the data source's rules merged over policy.defaults.
    masks: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # (schema, name) of relations the PHI policy has classified (policy.models.ClassifiedRelation): agents read
    # only these (policy.classification). Empty by default: a snapshot without the markers classifies nothing.
    classified_relations: frozenset[tuple[str, str]] = frozenset()
    # What column lineage needs (policy.lineage.RelationCatalog): names, column lists, view definitions.
    relation_columns: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    view_definitions: Mapping[tuple[str, str], str] = field(default_factory=dict)
    search_path: tuple[str, ...] = ("pg_catalog", "public")
    # PostgreSQL's own catalog relations (see is_system_relation): schema metadata, never PHI. Lineage reads them
    # as base relations, so their columns are DIRECT from themselves (and pass unless someone tagged them).
    system_relations: frozenset[int] = frozenset()
    # Names of pg_catalog relations that a relation in another schema also has. Unqualified, which of them a
    # session reads depends on its search_path (the DBA may set the read role's), so neither is assumed.
    shadowed_catalog_names: frozenset[str] = frozenset()
    # Every type by OID: its name, and for arrays the element type, so results can be given JSON types
    # (policy.result_values). Metadata only; a type created since the snapshot is "unknown" (text) until refresh.
    types: Mapping[int, PgType] = field(default_factory=dict)
    # Patient-key columns (policy.models.PatientKeyColumn), by name and by reported origin: (schema, table,
    # column) -> key name, and (relation oid, attnum) -> key name. Metadata for the accounting of disclosures
    # (policy.patient_keys); they never change a mask or a verdict.
    patient_keys: Mapping[tuple[str, str, str], str] = field(default_factory=dict)
    patient_key_origins: Mapping[tuple[int, int], str] = field(default_factory=dict)

    @functools.cached_property
    def patient_tables(self) -> frozenset[tuple[str, str]]:
        """(schema, table) of every relation with a patient-key column: reading one discloses patients' records."""
        return frozenset((schema, table) for schema, table, _ in self.patient_keys)

    @functools.cached_property
    def names_outside_pg_catalog(self) -> frozenset[str]:
        """Function names some other schema also defines (overload resolution could pick those)."""
        return frozenset(name for schema, name in self.functions.by_qualified_name if schema != "pg_catalog")

    @functools.cached_property
    def tags_by_column(self) -> Mapping[tuple[str, str, str], Tag]:
        """(schema, table, column) -> tag, for lineage sources (which are named, not numbered); built once per
        snapshot, since the read guard asks for it several times per decision."""
        return MappingProxyType({(t.schema_name, t.table_name, t.column_name): t for t in self.tagged_columns.values()})

    @functools.cached_property
    def tagged_tables(self) -> frozenset[tuple[str, str]]:
        """(schema, table) of every relation with a PHI tag."""
        return frozenset((t.schema_name, t.table_name) for t in self.tagged_columns.values())

    @functools.cached_property
    def _phi_columns_by_table(self) -> Mapping[tuple[str, str], frozenset[str]]:
        tables: dict[tuple[str, str], set[str]] = {}
        for tag in self.tagged_columns.values():
            tables.setdefault((tag.schema_name, tag.table_name), set()).add(tag.column_name)
        return MappingProxyType({table: frozenset(columns) for table, columns in tables.items()})

    def phi_columns(self, schema: str, name: str) -> frozenset[str]:
        """policy.classifier.PhiColumns: the tagged columns of a relation, so writes to PHI rank high."""
        return self._phi_columns_by_table.get((schema, name), frozenset())

    # policy.lineage.RelationCatalog -----------------------------------------------------------------------
    def resolve(self, schema: str | None, name: str) -> tuple[str, str] | None:
        """The relation PostgreSQL would read (names as the parser leaves them: unquoted ones already folded).

        Resolves to nothing (lineage unknown: redacted or held) when the snapshot cannot be sure which relation
        PostgreSQL reads:

        * a quoted name with upper-case letters: PostgreSQL reads exactly that relation, say a user view
          ``"PG_ROLES"``, which folding would mistake for pg_catalog.pg_roles. (Not matched exactly either: the
          classifier reports relation names folded to lower case, so policy.classification could not check it.)
        * an unqualified catalog name that another schema shadows: which one a session reads depends on its
          search_path (the read role's may be set by the DBA), which the snapshot does not know.
        """
        if name != name.lower() or (schema is not None and schema != schema.lower()):
            return None
        schemas = (schema,) if schema else self.search_path
        for candidate in schemas:
            if (candidate, name) in self.relation_columns:
                if schema is None and name in self.shadowed_catalog_names:
                    return None
                return candidate, name
        return None

    def columns(self, schema: str, name: str) -> tuple[str, ...] | None:
        return self.relation_columns.get((schema, name))

    def kind(self, schema: str, name: str) -> str | None:
        """pg_class.relkind, except that PostgreSQL's own catalog views answer as tables ('r').

        Their definitions read only other catalogs, so what they return is schema metadata: lineage takes their
        columns as DIRECT from the view itself instead of expanding a definition the snapshot does not load.
        User views are still expanded through their definitions.
        """
        oid = self.relation_oids.get(f"{schema}.{name}")
        if oid is None:
            return None
        return "r" if oid in self.system_relations else self.relkinds.get(oid)

    def view_definition(self, schema: str, name: str) -> str | None:
        return self.view_definitions.get((schema, name))

    # (phi_type, identity kind) -> allow | hold | deny, for filtering, sorting, grouping or joining on PHI.
    inference: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def mask_for(self, phi_type: str, identity_kind: str) -> str:
        """Unknown type or kind: redact (fail closed)."""
        return self.masks.get((phi_type, identity_kind), Mask.REDACT)

    def inference_for(self, phi_type: str, identity_kind: str) -> str:
        """Unknown type or kind: hold (fail closed)."""
        return self.inference.get((phi_type, identity_kind), "hold")

    def relation_oid(self, written_name: str) -> int | None:
        return self.relation_oids.get(written_name.lower())

    def is_system_relation(self, oid: int) -> bool:
        """Whether a relation is one of PostgreSQL's own catalogs (pg_catalog or information_schema, from initdb)."""
        return oid in self.system_relations


def text_only_adapters() -> AdaptersMap:
    """Adapters that load every value as PostgreSQL's own text output, for masking and for JSON."""
    adapters = AdaptersMap(psycopg.adapters)
    for info in psycopg.adapters.types:
        adapters.register_loader(info.oid, TextLoader)
        if info.array_oid:  # arrays too: a mask sees "{1,2}" as the wire does, not a list psycopg parsed
            adapters.register_loader(info.array_oid, TextLoader)
    return adapters


_RELATIONS_SQL = """
SELECT c.oid::bigint, n.nspname, c.relname, c.relkind,
       n.nspname IN ('pg_catalog', 'information_schema') AND c.oid < %(first_normal_oid)s
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT IN ('pg_toast') AND n.nspname NOT LIKE 'pg_temp%%'
"""

_COLUMNS_SQL = """
SELECT n.nspname, c.relname, array_agg(a.attname::text ORDER BY a.attnum)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT IN ('pg_toast') AND n.nspname NOT LIKE 'pg_temp%%'
GROUP BY n.nspname, c.relname
"""

_VIEWS_SQL = """
SELECT n.nspname, c.relname, pg_get_viewdef(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm')
  AND NOT (n.nspname IN ('pg_catalog', 'information_schema') AND c.oid < %(first_normal_oid)s)
"""

_OID_BOUND = {"first_normal_oid": FIRST_NORMAL_OBJECT_ID}

# An array type is the typarray of its element; an array of a domain holds values of the domain's base type.
_TYPES_SQL = """
SELECT t.oid::bigint, format_type(t.oid, NULL),
       coalesce(CASE WHEN e.typtype = 'd' THEN e.typbasetype ELSE e.oid END, 0)::bigint,
       coalesce(e.typdelim::text, ',')
FROM pg_type t LEFT JOIN pg_type e ON e.typarray = t.oid
"""

_ATTNUM_SQL = """
SELECT a.attnum FROM pg_attribute a
WHERE a.attrelid = %s AND a.attname = %s AND NOT a.attisdropped AND a.attnum > 0
"""


def load_target_catalog(
    conn: psycopg.Connection, tags: Iterable[Tag], patient_keys: Iterable[PatientKey] = ()
) -> TargetCatalog:
    relkinds: dict[int, str] = {}
    qualified: dict[str, int] = {}
    bare: dict[str, list[int]] = {}
    system: set[int] = set()
    catalog_names: set[str] = set()
    other_names: set[str] = set()
    for oid, schema, name, relkind, is_system in conn.execute(_RELATIONS_SQL, _OID_BOUND).fetchall():
        relkinds[int(oid)] = str(relkind)
        qualified[f"{schema}.{name}".lower()] = int(oid)
        if is_system:
            system.add(int(oid))
        if schema == "pg_catalog":
            catalog_names.add(str(name))
        elif schema != "information_schema":
            other_names.add(str(name))
        if schema != "information_schema":  # pg_catalog is always on the search path; information_schema is not
            bare.setdefault(str(name).lower(), []).append(int(oid))
    relation_oids = dict(qualified)
    for name, oids in bare.items():
        relation_oids.setdefault(name, oids[0] if len(oids) == 1 else -1)  # -1: ambiguous, treated as unknown
    tagged_columns: dict[tuple[int, int], Tag] = {}
    for tag in tags:
        oid = qualified.get(f"{tag.schema_name}.{tag.table_name}".lower())
        if oid is None:
            continue
        row = conn.execute(_ATTNUM_SQL, (oid, tag.column_name)).fetchone()
        if row is not None:
            tagged_columns[(oid, int(row[0]))] = tag
    key_names: dict[tuple[str, str, str], str] = {}
    key_origins: dict[tuple[int, int], str] = {}
    for key in patient_keys:
        key_names[(key.schema_name, key.table_name, key.column_name)] = key.key_name
        oid = qualified.get(f"{key.schema_name}.{key.table_name}".lower())
        row = None if oid is None else conn.execute(_ATTNUM_SQL, (oid, key.column_name)).fetchone()
        if oid is not None and row is not None:
            key_origins[(oid, int(row[0]))] = key.key_name
    relation_columns = {(str(s), str(n)): tuple(cols) for s, n, cols in conn.execute(_COLUMNS_SQL).fetchall()}
    view_definitions = {(str(s), str(n)): str(d) for s, n, d in conn.execute(_VIEWS_SQL, _OID_BOUND).fetchall() if d}
    types = {
        int(oid): PgType(name=str(name), element=int(element), delimiter=str(delimiter))
        for oid, name, element, delimiter in conn.execute(_TYPES_SQL).fetchall()
    }
    return TargetCatalog(
        relkinds=relkinds,
        relation_oids=relation_oids,
        tagged_columns=tagged_columns,
        tagged_relations=frozenset(oid for oid, _ in tagged_columns),
        functions=load_function_catalog(conn),
        relation_columns=relation_columns,
        view_definitions=view_definitions,
        system_relations=frozenset(system),
        shadowed_catalog_names=frozenset(catalog_names & other_names),
        types=MappingProxyType(types),
        patient_keys=MappingProxyType(key_names),
        patient_key_origins=MappingProxyType(key_origins),
    )


def _statement_may_carry_phi(classification: Classification, catalog: TargetCatalog) -> str | None:
    """Why a computed column of this statement could carry PHI, or None when it provably cannot."""
    for name in classification.relations:
        oid = catalog.relation_oid(name)
        if oid is None or oid < 0:
            return f"lineage unknown: relation {name} is not in the catalog snapshot"
        if oid in catalog.tagged_relations:
            return f"computed from a statement over PHI table {name}"
        if catalog.relkinds.get(oid) not in PLAIN_TABLE_KINDS:
            return f"lineage unknown: {name} is a view or foreign table"
    for function in classification.functions:
        schema, _, bare = function.rpartition(".")
        if schema and schema != "pg_catalog":
            return f"computed by non-builtin function {function}"
        if catalog.functions.by_qualified_name.get(("pg_catalog", bare.lower())) is None:
            return f"computed by non-builtin function {function}"
    return None


def plan_masks(
    origins: Sequence[tuple[int, int]], classification: Classification, catalog: TargetCatalog, identity_kind: str
) -> MaskingPlan:
    """The v1 column-level plan for one result, for one kind of viewer (see policy.masking for the rules)."""
    computed_reason = _statement_may_carry_phi(classification, catalog)
    plan: list[ColumnMask | None] = []
    for table_oid, attnum in origins:
        if table_oid:
            tag = catalog.tagged_columns.get((table_oid, attnum))
            if tag is not None:
                mask = catalog.mask_for(tag.phi_type, identity_kind)
                plan.append(None if mask == Mask.PASS else ColumnMask(mask, tag.phi_type, "tagged column"))
            elif catalog.relkinds.get(table_oid) in PLAIN_TABLE_KINDS or catalog.is_system_relation(table_oid):
                plan.append(None)  # an untagged table, or a catalog view (its columns are schema metadata)
            else:
                plan.append(ColumnMask(Mask.REDACT, "unknown", "lineage unknown: origin is not a plain table"))
        elif computed_reason is not None:
            plan.append(ColumnMask(Mask.REDACT, "unknown", computed_reason))
        else:
            plan.append(None)
    return MaskingPlan(tuple(plan))
