"""PHI tags follow data: which relations a write fills from a query, and which PHI type each filled column gets.

An approved ``CREATE TABLE c AS SELECT ssn FROM patients`` copies SSNs into a column nobody tagged; without this,
the copy is readable in clear. The executor (approvals.tags_follow_data) finds the fills here, asks the lineage
analyzer where each filled value comes from, and tags the target columns before the statement commits.

Pure: pglast and the lineage types only. The rules for a column's type, from what lineage says about its value:

* a count, or a value with no tagged source: no tag;
* an exact copy of one PHI type: that type (its masks fit the value's format);
* an exact copy of one of several PHI types (UNION arms, one column filled by several statements): the least
  strict type whose mask is at least as strict as every source type's, for every kind of viewer;
* a computed value over PHI (``reverse(ssn)``, ``name || ssn``, ``max(notes)``): the same, but also at least as
  strict as ``CONSERVATIVE_TYPE`` (free text of unknown shape, redacted for agents and engineers): a computed
  value has no format a last-four or year mask could rely on, and never carries a column's pseudonym;
* unknown lineage, or a value computed by a function whose body lineage cannot see: as a computed value.

"Least strict dominating type" is taken over every PhiType, with the data source's own masks; a tie goes to
``CONSERVATIVE_TYPE``, then to the source types. When no type dominates (a policy whose overrides make every type
weaker for some kind), the strictest type for agents wins: agents are who the masks are for first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pglast
from pglast import ast, enums
from pglast.parser import ParseError, parse_sql_json
from pglast.stream import RawStream

from policy.lineage_types import Derivation, Lineage, OutputColumn, SourceColumn
from policy.models import IdentityKind, Mask, PhiType
from policy.parse_depth import too_deep

CONSERVATIVE_TYPE = PhiType.CLINICAL_NOTES
_STRICTNESS = [Mask.PASS, Mask.GENERALIZE, Mask.PARTIAL, Mask.HASH, Mask.REDACT, Mask.NULL]
_VIEWERS = (IdentityKind.AGENT, IdentityKind.ENGINEER, IdentityKind.REVIEWER)

# (phi_type, identity kind) -> mask: the data source's effective masks (policy.catalog_cache.masks_for).
Masks = Mapping[tuple[str, str], str]
# (schema, table, column) -> phi_type, as stored.
Tags = Mapping[tuple[str, str, str], str]


class CannotFollow(ValueError):
    """The statement cannot be read well enough to know which relations it fills: it must not commit."""


# --------------------------------------------------------------------------------------------------------------
# Which relations a statement fills
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelationFill:
    """One relation a statement creates or writes from a query, and which of its columns receive values."""

    statement: str  # what does it, for the audit record: "CREATE TABLE AS", "INSERT", ...
    schema: str | None  # as written (parser-folded); None: the executor's search_path decides
    name: str
    temporary: bool
    # Its query describes every column of the relation (CREATE ... AS, SELECT INTO, CREATE VIEW): the relation can
    # be classified by lineage. False for writes into a relation that was there before (INSERT, UPDATE, MERGE).
    defines_relation: bool
    # The relation may have existed, and been readable, before the statement ran (so gateway snapshots may hold
    # it with its old tags).
    existed_before: bool
    # The columns that receive values, in the order of the query's outputs; None: the relation's own columns in
    # order (CREATE ... AS, INSERT without a column list).
    columns: tuple[str, ...] | None
    query: ast.SelectStmt | None = field(default=None, compare=False, repr=False)
    # INSERT ... ON CONFLICT DO UPDATE: the SET values may read the proposed row as "excluded".
    excluded_rows: ast.SelectStmt | None = field(default=None, compare=False, repr=False)
    excluded_columns: tuple[str, ...] | None = None

    def query_text(self, relation_columns: Sequence[str]) -> str | None:
        """The source query as SQL, or None when there is none lineage can follow (all its values are unknown)."""
        if self.query is None:
            return None
        if self.excluded_rows is None:
            return str(RawStream()(self.query))
        inserted = self.excluded_columns or tuple(relation_columns)
        excluded = ast.RangeSubselect(
            subquery=self.excluded_rows,
            alias=ast.Alias(aliasname="excluded", colnames=tuple(ast.String(sval=name) for name in inserted)),
        )
        with_excluded = ast.SelectStmt(
            targetList=self.query.targetList,
            fromClause=(*(self.query.fromClause or ()), excluded),
            withClause=self.query.withClause,
        )
        return str(RawStream()(with_excluded))


def relation_fills(sql: str) -> tuple[RelationFill, ...]:
    """Every relation the statements in ``sql`` create or fill from a query, in statement order.

    Raises CannotFollow when the text cannot be parsed safely (the classifier refuses such text before it can be
    approved, so this only guards against a gap between the two).
    """
    try:
        if too_deep(parse_sql_json(sql)):
            raise CannotFollow("statement is nested too deeply to follow its data")
        statements = pglast.parse_sql(sql)  # a fresh tree: the nodes are re-assembled below
    except ParseError as error:
        raise CannotFollow(f"statement cannot be parsed: {error}") from None
    fills: list[RelationFill] = []
    for raw in statements:
        fills.extend(_fills_of(raw.stmt))
    return tuple(fills)


def _fills_of(statement: ast.Node | None) -> list[RelationFill]:
    fills: list[RelationFill] = []
    with_clause = getattr(statement, "withClause", None)
    for cte in (with_clause.ctes or ()) if with_clause is not None else ():
        if isinstance(cte.ctequery, ast.InsertStmt | ast.UpdateStmt | ast.MergeStmt):
            # A data-modifying CTE: its query may read sibling CTEs, so its values are not followed (unknown).
            fills.extend(
                dataclasses.replace(fill, query=None, defines_relation=False) for fill in _fills_of(cte.ctequery)
            )
    if isinstance(statement, ast.CreateTableAsStmt):
        fills.append(_create_as(statement))
    elif isinstance(statement, ast.ViewStmt):
        fills.append(_create_view(statement))
    elif isinstance(statement, ast.SelectStmt) and statement.intoClause is not None:
        fills.append(_select_into(statement))
    elif isinstance(statement, ast.InsertStmt):
        fills.extend(_insert(statement))
    elif isinstance(statement, ast.UpdateStmt):
        fills.append(_update(statement))
    elif isinstance(statement, ast.MergeStmt):
        fills.extend(_merge(statement))
    return fills


def _fill(
    statement: str,
    relation: ast.RangeVar | None,
    query: ast.Node | None,
    *,
    defines_relation: bool,
    existed_before: bool,
    columns: tuple[str, ...] | None = None,
) -> RelationFill:
    if relation is None or not relation.relname:
        raise CannotFollow(f"{statement} names no relation")
    return RelationFill(
        statement,
        relation.schemaname,
        relation.relname,
        relation.relpersistence == "t",
        defines_relation=defines_relation,
        existed_before=existed_before,
        columns=columns,
        query=query if isinstance(query, ast.SelectStmt) else None,  # not CREATE TABLE AS EXECUTE
    )


def _create_as(statement: ast.CreateTableAsStmt) -> RelationFill:
    is_matview = statement.objtype == enums.ObjectType.OBJECT_MATVIEW
    return _fill(
        "CREATE MATERIALIZED VIEW" if is_matview else "CREATE TABLE AS",
        statement.into.rel if statement.into is not None else None,
        statement.query,
        defines_relation=not statement.if_not_exists,
        existed_before=bool(statement.if_not_exists),
    )


def _create_view(statement: ast.ViewStmt) -> RelationFill:
    # OR REPLACE replaces the whole definition: the query still describes every column.
    return _fill(
        "CREATE VIEW", statement.view, statement.query, defines_relation=True, existed_before=bool(statement.replace)
    )


def _select_into(statement: ast.SelectStmt) -> RelationFill:
    into = statement.intoClause
    statement.intoClause = None  # our own tree: what is left is the query that fills the new table
    return _fill(
        "SELECT INTO", into.rel if into is not None else None, statement, defines_relation=True, existed_before=False
    )


def _null_if_default(value: ast.Node | None) -> ast.Node | None:
    """DEFAULT in a VALUES row or a SET: the column default, which lineage cannot see but which holds no copy."""
    return ast.A_Const(isnull=True) if isinstance(value, ast.SetToDefault) else value


def _target_names(targets: Sequence[ast.ResTarget] | None) -> tuple[str, ...] | None:
    return tuple(str(target.name) for target in targets) if targets else None


def _insert(statement: ast.InsertStmt) -> list[RelationFill]:
    columns = _target_names(statement.cols)
    query = statement.selectStmt if isinstance(statement.selectStmt, ast.SelectStmt) else None
    if query is not None:
        if query.valuesLists:
            query.valuesLists = tuple(tuple(_null_if_default(value) for value in row) for row in query.valuesLists)
        if statement.withClause is not None:
            query.withClause = statement.withClause
    fills = [_fill("INSERT", statement.relation, query, defines_relation=False, existed_before=True, columns=columns)]
    conflict = statement.onConflictClause
    if conflict is not None and conflict.action == enums.OnConflictAction.ONCONFLICT_UPDATE and conflict.targetList:
        # SET values read the existing row (by the relation's name or alias) and the proposed one ("excluded").
        set_values = _set_values(conflict.targetList, (statement.relation,), conflict.whereClause, statement.withClause)
        upsert = _fill(
            "INSERT ... ON CONFLICT DO UPDATE",
            statement.relation,
            set_values if query is not None else None,
            defines_relation=False,
            existed_before=True,
            columns=_target_names(conflict.targetList),
        )
        fills.append(dataclasses.replace(upsert, excluded_rows=query, excluded_columns=columns))
    return fills


def _set_values(
    targets: Sequence[ast.ResTarget],
    sources: Sequence[ast.Node | None],
    where: ast.Node | None,
    with_clause: ast.WithClause | None,
) -> ast.SelectStmt | None:
    """``SELECT <assigned values> FROM <the write's relations>``, or None for ``SET (a, b) = (SELECT ...)``."""
    if any(isinstance(target.val, ast.MultiAssignRef) for target in targets):
        return None
    return ast.SelectStmt(
        targetList=tuple(ast.ResTarget(val=_null_if_default(target.val)) for target in targets),
        fromClause=tuple(source for source in sources if source is not None),
        whereClause=where,
        withClause=with_clause,
    )


def _update(statement: ast.UpdateStmt) -> RelationFill:
    targets = statement.targetList or ()
    sources = (statement.relation, *(statement.fromClause or ()))
    return _fill(
        "UPDATE",
        statement.relation,
        _set_values(targets, sources, statement.whereClause, statement.withClause),
        defines_relation=False,
        existed_before=True,
        columns=_target_names(targets),
    )


def _merge(statement: ast.MergeStmt) -> list[RelationFill]:
    sources = (statement.relation, statement.sourceRelation)
    fills = []
    for clause in statement.mergeWhenClauses or ():
        query: ast.SelectStmt | None
        if clause.commandType == enums.CmdType.CMD_UPDATE:
            query = _set_values(clause.targetList or (), sources, statement.joinCondition, statement.withClause)
        elif clause.commandType == enums.CmdType.CMD_INSERT and clause.values:
            query = ast.SelectStmt(
                targetList=tuple(ast.ResTarget(val=_null_if_default(value)) for value in clause.values),
                fromClause=tuple(source for source in sources if source is not None),
                whereClause=statement.joinCondition,
                withClause=statement.withClause,
            )
        else:
            continue  # DELETE, DO NOTHING, INSERT DEFAULT VALUES: nothing copied
        columns = _target_names(clause.targetList)
        fills.append(
            _fill("MERGE", statement.relation, query, defines_relation=False, existed_before=True, columns=columns)
        )
    return fills


# --------------------------------------------------------------------------------------------------------------
# Which PHI type a filled column gets
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InheritedTag:
    column: str
    phi_type: str
    why: str


def _strictness(phi_type: str, masks: Masks) -> tuple[int, ...]:
    """Per kind of viewer (agent first), how strict the type's mask is; an unknown cell counts as redact."""
    return tuple(_STRICTNESS.index(Mask(masks.get((phi_type, str(kind)), Mask.REDACT))) for kind in _VIEWERS)


def _dominates(first: tuple[int, ...], second: tuple[int, ...]) -> bool:
    return all(a >= b for a, b in zip(first, second, strict=True))


def strictest_type(types: Iterable[str], masks: Masks, *, computed: bool) -> str:
    """The least strict PHI type whose masks are at least as strict as every type in ``types`` (and, for a
    computed value, as CONSERVATIVE_TYPE) for every kind of viewer. See the module docstring."""
    required = set(types) | ({str(CONSERVATIVE_TYPE)} if computed else set())
    needs = [_strictness(t, masks) for t in required]
    preferred = [str(CONSERVATIVE_TYPE), *sorted(required), *(str(t) for t in PhiType)]
    candidates = [t for t in dict.fromkeys(preferred) if all(_dominates(_strictness(t, masks), n) for n in needs)]
    if candidates:
        return min(candidates, key=lambda t: (sum(_strictness(t, masks)), preferred.index(t)))
    return max(dict.fromkeys(preferred), key=lambda t: (_strictness(t, masks), -preferred.index(t)))


def _named(sources: Iterable[SourceColumn], tags: Tags) -> str:
    return ", ".join(sorted(f"{s.table}.{s.column}" for s in sources if (s.schema, s.table, s.column) in tags))


def inherited_type(output: OutputColumn, tags: Tags, masks: Masks, *, opaque_functions: bool) -> tuple[str, str] | None:
    """(phi_type, why) for a column filled with ``output``'s values, or None when they carry no PHI."""
    if output.unknown:
        return strictest_type((), masks, computed=True), "lineage of the value is unknown"
    if output.derivation == Derivation.COUNT:
        return None
    types = {tags[key] for s in output.sources if (key := (s.schema, s.table, s.column)) in tags}
    if opaque_functions and output.derivation != Derivation.DIRECT:
        why = "computed by a function whose body lineage cannot see"
        return strictest_type(types, masks, computed=True), why
    if not types:
        return None
    origin = _named(output.sources, tags)
    if output.derivation == Derivation.DIRECT:
        if len(types) == 1:
            return next(iter(types)), f"copy of {origin}"
        return strictest_type(types, masks, computed=False), f"copy of one of {origin}"
    return strictest_type(types, masks, computed=True), f"computed from {origin}"


@dataclass(frozen=True)
class FillTags:
    tags: tuple[InheritedTag, ...]
    complete: bool  # every filled column's lineage was established (nothing tagged for want of lineage)


def tags_for_fill(
    fill_columns: Sequence[str],
    lineage: Lineage | None,
    tags: Tags,
    masks: Masks,
    *,
    opaque_functions: bool,
    unknown_why: str = "",
) -> FillTags:
    """The tags of the columns ``fill_columns`` (as PostgreSQL names them, in the order of the query's outputs).

    Without lineage, or with lineage whose outputs do not line up with the columns, every column gets the
    conservative type: what it holds is unknown.
    """
    if lineage is None or len(lineage.outputs) != len(fill_columns):
        why = unknown_why or "lineage of the statement is unknown"
        conservative = strictest_type((), masks, computed=True)
        return FillTags(tuple(InheritedTag(c, conservative, why) for c in fill_columns), complete=False)
    inherited = []
    for column, output in zip(fill_columns, lineage.outputs, strict=True):
        found = inherited_type(output, tags, masks, opaque_functions=opaque_functions)
        if found is not None:
            inherited.append(InheritedTag(column, found[0], found[1]))
    return FillTags(tuple(inherited), complete=lineage.complete and not opaque_functions)
