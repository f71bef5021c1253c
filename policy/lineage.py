"""Column lineage: which base-table columns each result column of a read can carry.

Masking by result-column origin is easy to bypass: PostgreSQL reports no
origin for ``phone || ''``, ``concat(ssn)``, ``row_to_json(p)`` or a view
column, and a masker keyed on column names misses aliases, subqueries, CTEs
and UNION arms.  This module follows every value through the statement with
PostgreSQL's own parser (pglast) and a catalog snapshot, so the caller can
mask every output that derives from a PHI column, whatever the SQL does to it.

It fails closed.  Whenever lineage cannot be established (an unknown table, a
function whose result columns cannot be known, a node type it does not
handle, absurd nesting), the affected output is marked ``unknown`` and a
reason is recorded; ``sources`` never silently comes back empty for something
that might carry a column value.  Columns that leak only by inference (WHERE,
JOIN, GROUP BY, ORDER BY, CASE conditions, ...) are reported as ``filters``.

Known limits, by design: a function's body is invisible, so a user-defined
function that reads a table itself is only attributed its arguments' sources;
callers must not let such functions run unchecked (see policy.masking).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from pglast import ast, enums
from pglast.parser import ParseError

from policy.lineage_names import (
    COUNT_AGGREGATES,
    OUT_OF_SIGHT_FUNCTIONS,
    RECORD_SET_FUNCTIONS,
    SCALAR_SET_FUNCTIONS,
    SET_RETURNING_FUNCTIONS,
    VALUE_AGGREGATES,
    WINDOW_FUNCTIONS,
    function_name,
    is_builtin,
    output_name,
)
from policy.lineage_scope import (
    COMPUTED,
    CONSTANT,
    LITERAL,
    Column,
    CteBinding,
    CteState,
    FromItem,
    Relation,
    Scope,
    Value,
    as_unknown,
    base_value,
    column_of,
    combine_arms,
    everything,
    find_column,
    find_relations,
    has_placeholder,
    lookup,
    merge,
    placeholder,
    rename,
    rows_of,
    transformed,
    whole_row,
)
from policy.lineage_types import (
    Derivation,
    Lineage,
    OutputColumn,
    RelationCatalog,
    SourceColumn,
    UnsupportedStatement,
)
from policy.parse_depth import TooDeep, parse_statements

__all__ = [
    "Derivation",
    "DictCatalog",
    "Lineage",
    "OutputColumn",
    "ParseError",
    "RelationCatalog",
    "SourceColumn",
    "UnsupportedStatement",
    "analyze",
]

# pglast's conversion of the parse tree to Python objects recurses on the C
# stack without a depth check, so deeper trees are refused before conversion
# (the same bound policy.classifier uses).

# Nesting of queries and special expressions the analyzer follows before it
# gives up on a branch (as unknown).  Each level costs a handful of Python
# frames, so this stays well inside the interpreter's recursion limit.
_MAX_DEPTH = 64
_MAX_VIEW_NESTING = 24
# A recursive CTE's column sources grow monotonically within a finite set, so
# the fixed point comes quickly; this only guards against analyzer bugs.
_MAX_RECURSIVE_ROUNDS = 64

_VIEW_KINDS = frozenset({"v", "m"})

# Nodes that never carry a column value.
_INERT = (
    ast.A_Const,
    ast.ParamRef,
    ast.SQLValueFunction,
    ast.String,
    ast.Integer,
    ast.Float,
    ast.Boolean,
    ast.BitString,
    ast.TypeName,
    ast.JsonFormat,
    ast.JsonOutput,
    ast.JsonReturning,
    ast.MergeSupportFunc,
)

# Nodes whose value is computed from exactly these children (and nothing
# else that could carry a column): their value is TRANSFORMED over them.
_COMPUTED_CHILDREN: Mapping[type[ast.Node], tuple[str, ...]] = MappingProxyType(
    {
        ast.A_Expr: ("lexpr", "rexpr"),
        ast.TypeCast: ("arg",),
        ast.BoolExpr: ("args",),
        ast.NullTest: ("arg",),
        ast.BooleanTest: ("arg",),
        ast.CoalesceExpr: ("args",),
        ast.MinMaxExpr: ("args",),
        ast.A_ArrayExpr: ("elements",),
        ast.RowExpr: ("args",),
        ast.FuncCall: ("args",),
        ast.A_Indices: ("lidx", "uidx"),
        ast.XmlExpr: ("named_args", "args"),
        ast.XmlSerialize: ("expr",),
        ast.JsonKeyValue: ("key", "value"),
        ast.JsonObjectConstructor: ("exprs",),
        ast.JsonArrayConstructor: ("exprs",),
        ast.JsonIsPredicate: ("expr",),
        ast.JsonParseExpr: ("expr",),
        ast.JsonScalarExpr: ("expr",),
        ast.JsonSerializeExpr: ("expr",),
        ast.JsonFuncExpr: ("context_item", "pathspec", "passing", "on_empty", "on_error"),
        ast.JsonArgument: ("val",),
        ast.JsonBehavior: ("expr",),
        ast.JsonTablePathSpec: ("string",),
    }
)

# Expressions with semantics of their own, by analyzer method name.
_SPECIAL_EXPRESSIONS: Mapping[type[ast.Node], str] = MappingProxyType(
    {
        ast.FuncCall: "func_call",
        ast.SubLink: "sublink",
        ast.CaseExpr: "case",
        ast.A_Indirection: "indirection",
        ast.GroupingFunc: "grouping",
        ast.JsonArrayAgg: "json_aggregate",
        ast.JsonObjectAgg: "json_aggregate",
        ast.JsonArrayQueryConstructor: "json_array_query",
    }
)

# Wrappers that leave the value exactly as it is.
_PASS_THROUGH: Mapping[type[ast.Node], str] = MappingProxyType(
    {
        ast.CollateClause: "arg",
        ast.NamedArgExpr: "arg",
        ast.ResTarget: "val",
        ast.JsonValueExpr: "raw_expr",
    }
)


_T = TypeVar("_T")


@dataclass(frozen=True)
class _Effects:
    """What evaluating some SQL does besides producing values: columns it decides on or computes on, calls."""

    filters: frozenset[SourceColumn] = frozenset()
    computed_on: frozenset[SourceColumn] = frozenset()
    calls: frozenset[tuple[str | None, str]] = frozenset()


_NO_EFFECTS = _Effects()


@dataclass(frozen=True)
class _TargetUse:
    """One result column of the statement itself: the target-list item it comes from, and its effects.

    ``index`` is None when the column cannot be withheld on its own (``*`` expansions).
    """

    index: int | None
    effects: _Effects


@dataclass(frozen=True)
class _ViewExpansion:
    """A view's columns and what running its definition does (each use of the view runs it again)."""

    columns: tuple[Column, ...]
    effects: _Effects


# --------------------------------------------------------------------------
# Catalog for tests and snapshots
# --------------------------------------------------------------------------


class DictCatalog:
    """A RelationCatalog backed by plain mappings (tests, or a pg_catalog snapshot).

    ``tables`` maps (schema, name) to ordered column names and may include
    views; ``views`` maps (schema, name) to definitions (their kind defaults
    to 'v'); ``kinds`` overrides pg_class.relkind.  Names are matched exactly,
    as PostgreSQL stores them.
    """

    def __init__(
        self,
        tables: Mapping[tuple[str, str], Sequence[str]],
        kinds: Mapping[tuple[str, str], str] | None = None,
        views: Mapping[tuple[str, str], str] | None = None,
        search_path: Sequence[str] = ("pg_catalog", "public"),
    ) -> None:
        self._columns = MappingProxyType({key: tuple(names) for key, names in tables.items()})
        self._views = MappingProxyType(dict(views or {}))
        self._kinds = MappingProxyType(
            {**dict.fromkeys(self._columns, "r"), **dict.fromkeys(self._views, "v"), **dict(kinds or {})}
        )
        self._search_path = tuple(search_path)

    def resolve(self, schema: str | None, name: str) -> tuple[str, str] | None:
        """The relation PostgreSQL would find: exact schema, or the first search-path hit."""
        candidates = (schema,) if schema is not None else self._search_path
        for candidate in candidates:
            if (candidate, name) in self._kinds:
                return candidate, name
        return None

    def columns(self, schema: str, name: str) -> tuple[str, ...] | None:
        """Ordered column names, or None when the snapshot does not list them."""
        return self._columns.get((schema, name))

    def kind(self, schema: str, name: str) -> str | None:
        """pg_class.relkind of a known relation."""
        return self._kinds.get((schema, name))

    def view_definition(self, schema: str, name: str) -> str | None:
        """The stored SELECT of a view or materialized view."""
        return self._views.get((schema, name))


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


def _parse_select(sql: str) -> ast.SelectStmt:
    """Exactly one SELECT-like statement, or ParseError / UnsupportedStatement."""
    if "\x00" in sql:
        # The C parser stops at a NUL, so text after it would go unseen.
        raise ParseError("SQL text contains a NUL character", sql.index("\x00"))
    try:
        statements = parse_statements(sql)
    except TooDeep as error:
        raise UnsupportedStatement(str(error)) from error
    except UnicodeError as error:
        raise ParseError("SQL text is not valid Unicode", 0) from error
    if len(statements) != 1:
        raise UnsupportedStatement(f"expected exactly one statement, found {len(statements)}")
    statement = statements[0].stmt
    if not isinstance(statement, ast.SelectStmt):
        raise UnsupportedStatement(f"{type(statement).__name__} is not a read query")
    if statement.intoClause is not None:
        raise UnsupportedStatement("SELECT INTO creates a table")
    return statement


def _names(nodes: Sequence[object] | None) -> tuple[str, ...]:
    """The strings of a list of String nodes (alias column lists, USING lists)."""
    return tuple(node.sval or "" for node in nodes or () if isinstance(node, ast.String))


def _flatten(value: object) -> Iterator[object]:
    """Items of arbitrarily nested lists/tuples, iteratively, in order."""
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, tuple | list):
            stack.extend(reversed(current))
        elif current is not None:
            yield current


def _compares_values(node: ast.SelectStmt) -> bool:
    """Whether a set operation compares rows: everything but UNION ALL (INTERSECT ALL and EXCEPT ALL too)."""
    return node.op != enums.SetOperation.SETOP_UNION or not node.all


def _is_pure_set_operation(node: ast.SelectStmt) -> bool:
    """A set-operation node with nothing of its own, which can be flattened into its parent."""
    own = (node.withClause, node.sortClause, node.limitCount, node.limitOffset, node.lockingClause, node.intoClause)
    return node.op != enums.SetOperation.SETOP_NONE and all(part is None or part == () for part in own)


def _position(node: object) -> int | None:
    """The 1-based position of ``ORDER BY 2`` / ``GROUP BY 2``, if the item is one."""
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.Integer):
        return node.val.ival
    return None


def _bare_name(node: object) -> str | None:
    """The name of an unqualified column reference (``ORDER BY x``), if the item is one."""
    if isinstance(node, ast.ColumnRef) and node.fields and len(node.fields) == 1:
        field = node.fields[0]
        return field.sval if isinstance(field, ast.String) else None
    return None


# --------------------------------------------------------------------------
# The analyzer
# --------------------------------------------------------------------------


class _Analyzer:
    """One analysis: walks a statement, accumulating filters, relations and reasons.

    Queries and the few expression forms with their own semantics recurse,
    with an explicit depth budget; chains of plain operators and function
    calls are walked iteratively.  Not shared between threads.
    """

    def __init__(self, catalog: RelationCatalog) -> None:
        self.catalog = catalog
        self.filters: set[SourceColumn] = set()
        self.relations: set[tuple[str, str]] = set()
        self.reasons: dict[str, None] = {}
        # Columns computed on where the computation runs whatever the masks say (see Lineage.computed_on),
        # and the functions called there.
        self.computed_on: set[SourceColumn] = set()
        self.calls: set[tuple[str | None, str]] = set()
        # One entry per result column of the statement itself (not of nested queries), in order.
        self.top_targets: list[_TargetUse] = []
        self.depth = 0
        self.views: dict[tuple[str, str], _ViewExpansion] = {}
        self.view_stack: list[tuple[str, str]] = []
        # Keyed by id(); the node is kept so that the id cannot be reused by another node.
        self.sublink_names: dict[int, tuple[ast.SubLink, str]] = {}

    def note(self, reason: str) -> None:
        """Record why some lineage is unknown (once, in the order found)."""
        self.reasons.setdefault(reason, None)

    def unknown(self, reason: str, value: Value = CONSTANT) -> Value:
        """An unknown value carrying what is known, with its reason recorded."""
        self.note(reason)
        return as_unknown(value)

    def leak(self, value: Value) -> None:
        """Sources of a value that can leak by inference."""
        self.filters.update(value.sources)

    def filter(self, node: object, scope: Scope) -> None:
        """An expression whose columns can leak by inference (WHERE, ON, HAVING, LIMIT...)."""
        if node is not None:
            self.leak(self.expr(node, scope))

    def compute(self, parts: Iterable[Value]) -> Value:
        """A value PostgreSQL computes from ``parts``: it can fail, or take time, depending on them."""
        value = transformed(parts)
        self.computed_on.update(value.sources)
        return value

    def shape_rows(self, values: Iterable[Value]) -> None:
        """Values that decide how many rows come back (set-returning function arguments)."""
        for value in values:
            self.leak(value)

    def captured(self, analyze: Callable[[], _T]) -> tuple[_T, _Effects]:
        """Run one analysis step with fresh inference sets, returning what it added to them.

        The outer sets are restored untouched: the caller decides whether the step's effects count
        (an expression that is replaced by a constant before it runs has none).
        """
        saved = (self.filters, self.computed_on, self.calls)
        self.filters, self.computed_on, self.calls = set(), set(), set()
        try:
            result = analyze()
            effects = _Effects(frozenset(self.filters), frozenset(self.computed_on), frozenset(self.calls))
        finally:
            self.filters, self.computed_on, self.calls = saved
        return result, effects

    def apply(self, effects: _Effects) -> None:
        """Count a captured step's effects in the enclosing analysis."""
        self.filters.update(effects.filters)
        self.computed_on.update(effects.computed_on)
        self.calls.update(effects.calls)

    # ---------------------------------------------------------------- queries

    def query(self, node: object, env: Scope, top: bool = False) -> tuple[Column, ...]:
        """Result columns of a (sub)query evaluated inside ``env``; ``top`` for the statement itself."""
        if not isinstance(node, ast.SelectStmt):
            raise UnsupportedStatement(f"{type(node).__name__} is not a read query")
        if node.intoClause is not None:
            raise UnsupportedStatement("SELECT INTO creates a table")
        self.depth += 1
        try:
            if self.depth > _MAX_DEPTH:
                self.note("queries are nested too deeply to analyze")
                return (placeholder(),)
            return self._select(node, env, top)
        finally:
            self.depth -= 1

    def _select(self, node: ast.SelectStmt, env: Scope, top: bool = False) -> tuple[Column, ...]:
        """SELECT, VALUES or a set operation, with its WITH, ORDER BY and LIMIT."""
        ctes = self.with_clause(node.withClause, env) if node.withClause is not None else env.ctes
        outer = env.nested(ctes=ctes)
        scope = outer
        if node.op != enums.SetOperation.SETOP_NONE:
            columns = self.set_operation(node, outer)
        elif node.valuesLists:
            columns = self.values(node.valuesLists, outer)
        else:
            scope = self.from_clause(node.fromClause or (), outer)
            columns = self._plain_select(node, scope, top)
        for sort in node.sortClause or ():
            self.sort_key(sort.node, scope, columns, prefer_output=True)
        self.filter(node.limitCount, scope)
        self.filter(node.limitOffset, scope)
        return columns

    def _plain_select(self, node: ast.SelectStmt, scope: Scope, top: bool = False) -> tuple[Column, ...]:
        """The clauses of a simple SELECT once its FROM clause is known."""
        self.filter(node.whereClause, scope)
        for window in node.windowClause or ():
            self.window(window, scope)
        columns = self.target_list(node.targetList or (), scope, top)
        for item in _flatten(node.groupClause):
            if isinstance(item, ast.GroupingSet):
                continue
            self.sort_key(item, scope, columns, prefer_output=False)
        for grouping_set in _grouping_sets(node.groupClause):
            for item in _flatten(grouping_set.content):
                if not isinstance(item, ast.GroupingSet):
                    self.sort_key(item, scope, columns, prefer_output=False)
        self.filter(node.havingClause, scope)
        for item in node.distinctClause or ():
            if item is not None:
                self.sort_key(item, scope, columns, prefer_output=True)
        if any(item is None for item in node.distinctClause or ()):
            # Plain DISTINCT: how many rows come back depends on which values are equal.
            self.leak(merge(column.value for column in columns))
        return columns

    def set_operation(self, node: ast.SelectStmt, outer: Scope) -> tuple[Column, ...]:
        """UNION / INTERSECT / EXCEPT: output i may be any arm's column i.

        Left-deep chains of set operations (agents like long UNION ALLs) are
        flattened iteratively; only arms with their own clauses recurse.
        """
        arms: list[tuple[Column, ...]] = []
        compares_values = _compares_values(node)
        stack: list[object] = [node.rarg, node.larg]
        while stack:
            current = stack.pop()
            if isinstance(current, ast.SelectStmt) and _is_pure_set_operation(current):
                compares_values = compares_values or _compares_values(current)
                stack.extend((current.rarg, current.larg))
            elif current is not None:
                arms.append(self.query(current, outer))
        if not arms:
            return (placeholder(self.unknown("set operation without arms")),)
        if compares_values:
            # UNION, INTERSECT and EXCEPT keep or drop rows by comparing them: every column decides the count.
            self.leak(merge(column.value for arm in arms for column in arm))
        columns, aligned = combine_arms(arms)
        if not aligned and not any(has_placeholder(arm) for arm in arms):
            self.note("set operation arms return different numbers of columns")
        return columns

    def values(self, rows: Sequence[object], scope: Scope) -> tuple[Column, ...]:
        """VALUES lists: columnN may be any row's Nth expression."""
        evaluated = [[self.expr(item, scope) for item in row] for row in rows if isinstance(row, tuple | list)]
        width = len(evaluated[0]) if evaluated else 0
        if not evaluated or any(len(row) != width for row in evaluated):
            flat = [value for row in evaluated for value in row]
            return (placeholder(self.unknown("VALUES rows differ in length", merge(flat))),)
        return tuple(Column(f"column{index + 1}", merge(row[index] for row in evaluated)) for index in range(width))

    def target_list(self, targets: Sequence[object], scope: Scope, top: bool = False) -> tuple[Column, ...]:
        """Result columns, with ``*``, ``t.*`` and ``(x).*`` expanded in order.

        For the statement's own target list (``top``), each expression's effects (what it filters and
        computes on) are kept apart, in ``top_targets``: the caller may replace the expression by a
        constant, and then none of them happen.
        """
        columns: list[Column] = []
        for index, target in enumerate(targets):
            if not isinstance(target, ast.ResTarget):
                columns.append(placeholder(self.unknown(f"unsupported target {type(target).__name__}")))
                if top:
                    self.top_targets.append(_TargetUse(None, _NO_EFFECTS))
                continue
            value_node = target.val
            if isinstance(value_node, ast.ColumnRef) and value_node.fields and _ends_with_star(value_node.fields):
                expanded = self.expand_star(value_node, scope)
            elif isinstance(value_node, ast.A_Indirection) and _ends_with_star(value_node.indirection):
                expanded = self.expand_fields(value_node, scope)
            else:
                name = target.name
                if top:
                    value, effects = self.captured(functools.partial(self.expr, value_node, scope))
                    self.top_targets.append(_TargetUse(index, effects))
                else:
                    value = self.expr(value_node, scope)
                columns.append(Column(name or output_name(value_node, self.sublink_name), value))
                continue
            columns.extend(expanded)
            if top:
                self.top_targets.extend(_TargetUse(None, _NO_EFFECTS) for _ in expanded)
        return tuple(columns)

    def sublink_name(self, node: ast.SubLink) -> str | None:
        """Name of an analyzed scalar subquery's first column (PostgreSQL names the result after it)."""
        entry = self.sublink_names.get(id(node))
        return entry[1] if entry is not None and entry[0] is node else None

    def expand_star(self, ref: ast.ColumnRef, scope: Scope) -> tuple[Column, ...]:
        """``*`` (every FROM item in order) or ``qualifier.*`` (one relation)."""
        qualifier = _names(ref.fields)
        if len(qualifier) != len(ref.fields or ()) - 1:
            return (placeholder(self.unknown("unsupported star reference")),)
        if not qualifier:
            if not scope.items:
                return (placeholder(self.unknown("SELECT * without a FROM clause")),)
            return tuple(column for item in scope.items for column in item.columns)
        relations = find_relations(scope, qualifier)
        display = ".".join(qualifier)
        if not relations:
            return (placeholder(self.unknown(f"relation {display} of {display}.* not found")),)
        if len(relations) > 1:
            return (placeholder(self.unknown(f"{display}.* is ambiguous", rows_of(relations))),)
        return relations[0].columns

    def expand_fields(self, node: ast.A_Indirection, scope: Scope) -> tuple[Column, ...]:
        """``(p).*``: the columns of a whole-row reference; other composites cannot be listed."""
        relations = self.row_relations(node.arg, scope)
        if len(relations) == 1 and len(node.indirection or ()) == 1:
            return relations[0].columns
        value = self.expr(node.arg, scope)
        return (placeholder(self.unknown("fields of a composite value expanded with .* cannot be listed", value)),)

    def sort_key(self, node: object, scope: Scope, outputs: Sequence[Column], prefer_output: bool) -> None:
        """An ORDER BY / GROUP BY / DISTINCT ON item: positions and bare names may mean result columns.

        PostgreSQL matches a bare ORDER BY name against result columns first
        and a GROUP BY name against input columns first; either way the
        columns involved can leak by inference.
        """
        position = _position(node)
        if position is not None:
            chosen = list(outputs[position - 1 : position])
            if has_placeholder(outputs[:position]) or not chosen:
                chosen = list(outputs)
            self.leak(merge(column.value for column in chosen))
            return
        name = _bare_name(node)
        if name is not None:
            results = [column.value for column in outputs if column.name == name and not column.placeholder]
            if prefer_output and results:
                self.leak(merge(results))
                return
            if not prefer_output:
                # GROUP BY: an input column of this very level wins over a result alias.
                value = find_column(Scope(scope.items, None, scope.ctes), name)
                if value is not None or results:
                    self.leak(merge([value] if value is not None else results))
                    return
        self.filter(node, scope)

    def window(self, node: object, scope: Scope) -> None:
        """PARTITION BY / ORDER BY / frame offsets of a window leak by inference."""
        if not isinstance(node, ast.WindowDef):
            return
        for item in node.partitionClause or ():
            self.filter(item, scope)
        for sort in node.orderClause or ():
            self.filter(sort.node if isinstance(sort, ast.SortBy) else sort, scope)
        self.filter(node.startOffset, scope)
        self.filter(node.endOffset, scope)

    # ------------------------------------------------------------- WITH

    def with_clause(self, clause: ast.WithClause, env: Scope) -> Mapping[str, CteBinding]:
        """Bind and evaluate a WITH list; returns the CTE names visible to the query body."""
        bindings: list[CteBinding] = []
        for cte in clause.ctes or ():
            if not isinstance(cte, ast.CommonTableExpr) or not cte.ctename:
                raise UnsupportedStatement("malformed WITH clause")
            if not isinstance(cte.ctequery, ast.SelectStmt):
                kind = type(cte.ctequery).__name__
                raise UnsupportedStatement(f"WITH query {cte.ctename} is a data-modifying statement ({kind})")
            bindings.append(CteBinding(cte.ctename, cte, bool(clause.recursive)))
        visible = dict(env.ctes)
        if clause.recursive:
            visible.update((binding.name, binding) for binding in bindings)
            shared = env.nested(ctes=MappingProxyType(visible))
            for binding in bindings:
                binding.env = shared
        else:
            for binding in bindings:
                binding.env = env.nested(ctes=MappingProxyType(dict(visible)))
                visible[binding.name] = binding
        for binding in bindings:
            self.cte_columns(binding)
        return MappingProxyType(visible)

    def cte_columns(self, binding: CteBinding) -> tuple[Column, ...]:
        """A WITH query's columns, evaluating it on first use."""
        if binding.state in (CteState.DONE, CteState.ITERATING):
            return binding.columns
        if binding.state is CteState.RUNNING:
            return (placeholder(self.unknown(f"WITH query {binding.name} refers to itself outside a recursive UNION")),)
        binding.state = CteState.RUNNING
        columns = self._evaluate_cte(binding)
        binding.columns = columns
        binding.state = CteState.DONE
        return columns

    def _evaluate_cte(self, binding: CteBinding) -> tuple[Column, ...]:
        """Non-recursive: its query's columns.  Recursive: iterate the recursive term to a fixed point."""
        node = binding.node
        env = binding.env
        if not isinstance(node, ast.CommonTableExpr) or env is None or not isinstance(node.ctequery, ast.SelectStmt):
            return (placeholder(self.unknown(f"WITH query {binding.name} cannot be analyzed")),)
        query = node.ctequery
        aliases = _names(node.aliascolnames)
        is_union = query.op == enums.SetOperation.SETOP_UNION and query.larg is not None and query.rarg is not None
        if binding.recursive and is_union:
            columns = self._recursive_cte(binding, query, aliases, env)
        else:
            columns = rename(self.query(query, env), aliases)
        return (*columns, *self._search_cycle_columns(node, columns))

    def _recursive_cte(
        self, binding: CteBinding, query: ast.SelectStmt, aliases: tuple[str, ...], env: Scope
    ) -> tuple[Column, ...]:
        """Sources of a recursive CTE: the non-recursive term, grown by the recursive term until stable."""
        if query.withClause is not None:
            env = env.nested(ctes=self.with_clause(query.withClause, env))
        columns = rename(self.query(query.larg, env), aliases)
        binding.state = CteState.ITERATING
        for _ in range(_MAX_RECURSIVE_ROUNDS):
            binding.columns = columns
            step = rename(self.query(query.rarg, env), aliases)
            grown, aligned = combine_arms([columns, step])
            if not aligned and not has_placeholder(columns) and not has_placeholder(step):
                self.note(f"recursive WITH query {binding.name} has terms of different widths")
            if grown == columns:
                break
            columns = grown
        else:
            self.note(f"recursive WITH query {binding.name} did not reach a fixed point")
            columns = tuple(Column(column.name, as_unknown(column.value), column.placeholder) for column in columns)
        for sort in query.sortClause or ():
            self.filter(sort.node, env)
        return columns

    def _search_cycle_columns(self, node: ast.CommonTableExpr, columns: tuple[Column, ...]) -> tuple[Column, ...]:
        """Columns added by SEARCH and CYCLE clauses, computed from the columns they list."""
        extra: list[Column] = []
        search = node.search_clause
        if isinstance(search, ast.CTESearchClause) and search.search_seq_column:
            value = self._listed(columns, _names(search.search_col_list))
            extra.append(Column(search.search_seq_column, value))
        cycle = node.cycle_clause
        if isinstance(cycle, ast.CTECycleClause):
            value = self._listed(columns, _names(cycle.cycle_col_list))
            extra.extend(
                Column(name, value) for name in (cycle.cycle_mark_column, cycle.cycle_path_column) if name is not None
            )
        return tuple(extra)

    def _listed(self, columns: tuple[Column, ...], names: Sequence[str]) -> Value:
        """Computed from the named columns of a column list."""
        values = [column_of([Relation(None, None, columns)], name) for name in names]
        listed = [value if value is not None else self.unknown("unknown SEARCH/CYCLE column") for value in values]
        # CYCLE stops the recursion when listed values repeat; SEARCH orders by them.
        for value in listed:
            self.leak(value)
        return self.compute(listed)

    # ------------------------------------------------------------- FROM

    def from_clause(self, items: Sequence[object], outer: Scope) -> Scope:
        """Evaluate FROM items in order; each may see the earlier ones if it is LATERAL."""
        evaluated: list[FromItem] = []
        for item in items:
            evaluated.append(self.from_item(item, outer.nested(tuple(evaluated))))
        return outer.nested(tuple(evaluated))

    def from_item(self, node: object, lateral: Scope) -> FromItem:
        """One FROM entry; ``lateral`` holds the entries before it (visible only to LATERAL forms)."""
        self.depth += 1
        try:
            if self.depth > _MAX_DEPTH:
                return _opaque_item(self.unknown("FROM clause nested too deeply to analyze"))
            return self._from_item(node, lateral)
        finally:
            self.depth -= 1

    def _from_item(self, node: object, lateral: Scope) -> FromItem:
        if isinstance(node, ast.RangeVar):
            return self.range_var(node, lateral)
        if isinstance(node, ast.JoinExpr):
            return self.join(node, lateral)
        if isinstance(node, ast.RangeSubselect):
            env = lateral if node.lateral else lateral.sibling(())
            columns = rename(self.query(node.subquery, env), _alias_columns(node.alias))
            return _named_item(node.alias.aliasname if node.alias else None, columns)
        if isinstance(node, ast.RangeFunction):
            return self.range_function(node, lateral)
        if isinstance(node, ast.RangeTableSample):
            item = self.from_item(node.relation, lateral)
            for argument in node.args or ():
                self.filter(argument, lateral)
            self.filter(node.repeatable, lateral)
            # The sample follows the table's pages, and how rows fill pages follows the widths of their values.
            self.leak(merge(column.value for column in item.columns))
            return item
        if isinstance(node, ast.RangeTableFunc):
            return self.xml_table(node, lateral)
        if isinstance(node, ast.JsonTable):
            return self.json_table(node, lateral)
        return _opaque_item(self.unknown(f"unsupported FROM item {type(node).__name__}"))

    def range_var(self, node: ast.RangeVar, scope: Scope) -> FromItem:
        """A table, view or CTE named in FROM."""
        name = node.relname or ""
        alias = node.alias
        refname = alias.aliasname if alias is not None and alias.aliasname else name
        if node.schemaname is None and node.catalogname is None and name in scope.ctes:
            columns = rename(self.cte_columns(scope.ctes[name]), _alias_columns(alias))
            return _named_item(refname, columns)
        resolved = self.catalog.resolve(node.schemaname, name)
        if resolved is None:
            display = ".".join(part for part in (node.catalogname, node.schemaname, name) if part)
            columns = (placeholder(self.unknown(f"relation {display} is not in the catalog")),)
            return _named_item(refname, columns, node.schemaname if alias is None else None)
        schema, relname = resolved
        base = self.catalog.kind(schema, relname) not in _VIEW_KINDS
        columns = self.table_columns(schema, relname) if base else self.view_columns(schema, relname)
        columns = rename(columns, _alias_columns(alias))
        relation = Relation(refname, schema if alias is None else None, columns, base)
        return FromItem(columns, (relation,), base)

    def table_columns(self, schema: str, name: str) -> tuple[Column, ...]:
        """A base table's columns, each DIRECT from itself."""
        self.relations.add((schema.lower(), name.lower()))
        names = self.catalog.columns(schema, name)
        if names is None:
            return (placeholder(self.unknown(f"columns of {schema}.{name} are not in the catalog")),)
        return tuple(Column(column, base_value(schema, name, column)) for column in names)

    def view_columns(self, schema: str, name: str) -> tuple[Column, ...]:
        """A view's columns, traced through its definition to base tables (once per analysis)."""
        key = (schema, name)
        cached = self.views.get(key)
        if cached is None:
            if key in self.view_stack:
                return (placeholder(self.unknown(f"view {schema}.{name} refers to itself")),)
            if len(self.view_stack) >= _MAX_VIEW_NESTING:
                return (placeholder(self.unknown(f"views nested too deeply at {schema}.{name}")),)
            self.view_stack.append(key)
            try:
                columns, effects = self.captured(lambda: self._expand_view(schema, name))
            finally:
                self.view_stack.pop()
            cached = self.views[key] = _ViewExpansion(columns, effects)
        # Every use of the view runs its definition, wherever the first use was.
        self.apply(cached.effects)
        return cached.columns

    def _expand_view(self, schema: str, name: str) -> tuple[Column, ...]:
        """Analyze a view's definition in a fresh scope and give its outputs the view's column names."""
        definition = self.catalog.view_definition(schema, name)
        if definition is None:
            return (placeholder(self.unknown(f"definition of view {schema}.{name} is not in the catalog")),)
        try:
            columns = self.query(_parse_select(definition), Scope.root())
        except (ParseError, UnsupportedStatement) as error:
            return (placeholder(self.unknown(f"definition of view {schema}.{name} cannot be analyzed: {error}")),)
        names = self.catalog.columns(schema, name)
        if names is None:
            return columns
        if has_placeholder(columns) or len(names) != len(columns):
            if not has_placeholder(columns):
                self.note(f"view {schema}.{name} has {len(names)} columns but its definition returns {len(columns)}")
            value = everything(columns)
            return tuple(Column(column, value) for column in names)
        return tuple(Column(column, output.value) for column, output in zip(names, columns, strict=True))

    def join(self, node: ast.JoinExpr, lateral: Scope) -> FromItem:
        """JOIN: USING/NATURAL columns merge both sides; ON, USING and NATURAL columns leak by inference."""
        left = self.from_item(node.larg, lateral)
        right = self.from_item(node.rarg, lateral.sibling((*lateral.items, left)))
        self.filter(node.quals, lateral.sibling((left, right)))
        if node.isNatural and (has_placeholder(left.columns) or has_placeholder(right.columns)):
            reason = "NATURAL JOIN with a side whose columns are unknown"
            columns: tuple[Column, ...] = (
                placeholder(self.unknown(reason, everything((*left.columns, *right.columns)))),
            )
            merged: tuple[Column, ...] = ()
        else:
            merged = self._merged_columns(node, left, right)
            shared = {column.name for column in merged}
            rest = [
                column for column in (*left.columns, *right.columns) if column.placeholder or column.name not in shared
            ]
            columns = (*merged, *rest)
        relations = (*left.relations, *right.relations)
        if node.join_using_alias is not None and node.join_using_alias.aliasname:
            relations = (*relations, Relation(node.join_using_alias.aliasname, None, merged))
        if node.alias is not None:
            columns = rename(columns, _alias_columns(node.alias))
            relations = (Relation(node.alias.aliasname, None, columns),)
        return FromItem(columns, relations)

    def _merged_columns(self, node: ast.JoinExpr, left: FromItem, right: FromItem) -> tuple[Column, ...]:
        """USING / NATURAL columns: one column whose value may come from either side."""
        if node.isNatural:
            right_names = {column.name for column in right.columns}
            names = tuple(dict.fromkeys(column.name for column in left.columns if column.name in right_names))
        else:
            names = _names(node.usingClause)
        merged: list[Column] = []
        for name in names:
            sides = [lookup(item.columns, name, item.base) for item in (left, right)]
            if any(side is None for side in sides):
                value = self.unknown(f"join column {name} not found on both sides")
            else:
                value = merge(side for side in sides if side is not None)
            self.leak(value)
            merged.append(Column(name, value))
        return tuple(merged)

    def range_function(self, node: ast.RangeFunction, scope: Scope) -> FromItem:
        """Functions in FROM (always able to see earlier FROM items, like LATERAL)."""
        entries = [entry for entry in node.functions or () if entry is not None]
        alias = node.alias
        columns: list[Column] = []
        for entry in entries:
            call = entry[0] if isinstance(entry, tuple | list) else entry
            definitions = entry[1] if isinstance(entry, tuple | list) and len(entry) > 1 else None
            if definitions is None and not node.is_rowsfrom:
                definitions = node.coldeflist
            sole_alias = alias.aliasname if alias is not None and len(entries) == 1 else None
            columns.extend(self.function_columns(call, definitions, sole_alias, scope))
        if node.ordinality:
            columns.append(Column("ordinality", CONSTANT))
        renamed = rename(tuple(columns), _alias_columns(alias))
        refname = alias.aliasname if alias is not None else _first_function_name(entries)
        return _named_item(refname, renamed)

    def function_columns(
        self, call: object, definitions: Sequence[object] | None, alias: str | None, scope: Scope
    ) -> list[Column]:
        """Columns one FROM function returns, each computed from all its arguments."""
        if not isinstance(call, ast.FuncCall):
            value = self.expr(call, scope)
            self.shape_rows([value])
            return [Column(alias or output_name(call, self.sublink_name), self.compute([value]))]
        schema, name = function_name(call)
        self.calls.add((schema, name))
        if name in OUT_OF_SIGHT_FUNCTIONS:
            return [placeholder(self.out_of_sight(call, scope))]
        arguments = [self.expr(argument, scope) for argument in call.args or ()]
        # A function in FROM returns rows: its arguments decide how many (generate_series(1, ascii(ssn))).
        self.shape_rows(arguments)
        value = self.compute(arguments)
        if definitions:
            return [Column(d.colname or "", value) for d in definitions if isinstance(d, ast.ColumnDef)]
        if is_builtin(schema):
            if name in RECORD_SET_FUNCTIONS:
                return [Column(column, value) for column in RECORD_SET_FUNCTIONS[name]]
            if name == "unnest" and len(arguments) > 1:
                return [Column(name, transformed([argument])) for argument in arguments]
            if name in SCALAR_SET_FUNCTIONS:
                return [Column(alias or name, value)]
        display = ".".join(part for part in (schema, name) if part)
        return [placeholder(self.unknown(f"columns returned by {display}() cannot be known", value))]

    def xml_table(self, node: ast.RangeTableFunc, scope: Scope) -> FromItem:
        """XMLTABLE: every column is computed from the document and the row/column paths."""
        shared = [self.expr(node.docexpr, scope), self.expr(node.rowexpr, scope)]
        shared.extend(self.expr(namespace, scope) for namespace in node.namespaces or ())
        self.shape_rows(shared)
        columns: list[Column] = []
        for column in node.columns or ():
            if not isinstance(column, ast.RangeTableFuncCol):
                continue
            if column.for_ordinality:
                columns.append(Column(column.colname or "", CONSTANT))
                continue
            own = [self.expr(column.colexpr, scope), self.expr(column.coldefexpr, scope)]
            columns.append(Column(column.colname or "", self.compute([*shared, *own])))
        renamed = rename(tuple(columns), _alias_columns(node.alias))
        return _named_item(node.alias.aliasname if node.alias is not None else "xmltable", renamed)

    def json_table(self, node: ast.JsonTable, scope: Scope) -> FromItem:
        """JSON_TABLE: every column is computed from the context item and PASSING arguments."""
        shared = [self.expr(node.context_item, scope), self.expr(node.pathspec, scope)]
        shared.extend(self.expr(argument, scope) for argument in node.passing or ())
        self.shape_rows(shared)
        self.filter(node.on_error, scope)
        columns: list[Column] = []
        for column in _json_table_columns(node.columns):
            if column.coltype == enums.JsonTableColumnType.JTC_FOR_ORDINALITY:
                columns.append(Column(column.name or "", CONSTANT))
                continue
            own = [self.expr(column.on_empty, scope), self.expr(column.on_error, scope)]
            columns.append(Column(column.name or "", self.compute([*shared, *own])))
        renamed = rename(tuple(columns), _alias_columns(node.alias))
        return _named_item(node.alias.aliasname if node.alias is not None else "json_table", renamed)

    # ------------------------------------------------------------- expressions

    def expr(self, node: object, scope: Scope) -> Value:
        """Lineage of one expression evaluated in ``scope``."""
        if node is None or isinstance(node, _INERT):
            return LITERAL if _is_literal(node) else CONSTANT
        self.depth += 1
        try:
            if self.depth > _MAX_DEPTH:
                return self.opaque(node, scope, "expression nested too deeply to analyze")
            return self._expr(node, scope)
        finally:
            self.depth -= 1

    def _expr(self, node: object, scope: Scope) -> Value:
        if isinstance(node, tuple | list):
            return self.compute(self.expr(item, scope) for item in node)
        if isinstance(node, ast.ColumnRef):
            return self.column_ref(node, scope)
        if not isinstance(node, ast.Node):
            return self.opaque(node, scope, f"unsupported expression value {type(node).__name__}")
        passed = _PASS_THROUGH.get(type(node))
        if passed is not None:
            return self.expr(getattr(node, passed), scope)
        special = _SPECIAL_EXPRESSIONS.get(type(node))
        if special is not None:
            handler: Callable[[Any, Scope], Value] = getattr(self, special)
            return handler(node, scope)
        if type(node) in _COMPUTED_CHILDREN:
            return self.computed(node, scope)
        return self.opaque(node, scope, f"unsupported expression node {type(node).__name__}")

    def computed(self, node: object, scope: Scope) -> Value:
        """TRANSFORMED over every child, walking nested operators and plain calls iteratively."""
        parts: list[Value] = []
        stack = [node]
        while stack:
            current = stack.pop()
            if isinstance(current, ast.FuncCall):
                self.calls.add(function_name(current))
            for child in _computed_children(current):
                if _is_computed(child):
                    stack.append(child)
                else:
                    parts.append(self.expr(child, scope))
        return self.compute(parts)

    def opaque(self, node: object, scope: Scope, reason: str) -> Value:
        """Something not understood: unknown, carrying every column referenced anywhere under it."""
        self.note(reason)
        sources: set[SourceColumn] = set()
        for current in _descendants(node):
            if isinstance(current, ast.ColumnRef):
                value = self.resolve(current, scope)
                if value is not None:
                    sources.update(value.sources)
        return Value(frozenset(sources), Derivation.TRANSFORMED, True)

    def column_ref(self, node: ast.ColumnRef, scope: Scope) -> Value:
        """A column (or whole-row) reference; unresolvable references are unknown."""
        value = self.resolve(node, scope)
        if value is not None:
            return value
        display = ".".join((field.sval or "") if isinstance(field, ast.String) else "*" for field in node.fields or ())
        return self.unknown(f"column {display} cannot be resolved")

    def resolve(self, node: ast.ColumnRef, scope: Scope) -> Value | None:
        """PostgreSQL's resolution of ``a``, ``t.a``, ``s.t.a``, ``d.s.t.a``, ``t.*``, ``t`` (whole row).

        Relation-qualified forms are tried before composite-field forms, as
        PostgreSQL does; None when nothing matches.
        """
        fields = node.fields or ()
        names = _names(fields)
        if fields and isinstance(fields[-1], ast.A_Star):
            if len(names) != len(fields) - 1:
                return None
            if not names:
                return whole_row([column for item in scope.items for column in item.columns])
            relations = find_relations(scope, names)
            return rows_of(relations) if relations else None
        if len(names) != len(fields) or not names:
            return None
        if len(names) == 1:
            value = find_column(scope, names[0])
            if value is not None:
                return value
            relations = find_relations(scope, names)
            return rows_of(relations) if relations else None
        relations = find_relations(scope, names[:-1])
        if relations:
            return column_of(relations, names[-1])
        return self._field_of_column(names, scope)

    def _field_of_column(self, names: tuple[str, ...], scope: Scope) -> Value | None:
        """``c.f`` / ``t.c.f`` where c is a composite column and f a field of it."""
        if len(names) == 2:
            inner = find_column(scope, names[0])
        elif len(names) == 3:
            relations = find_relations(scope, names[:1])
            inner = column_of(relations, names[1]) if relations else None
        else:
            inner = None
        return self.compute([inner]) if inner is not None else None

    def row_relations(self, node: object, scope: Scope) -> tuple[Relation, ...]:
        """The relation(s) a bare whole-row reference (``p`` or ``p.*``) names, else ()."""
        if not isinstance(node, ast.ColumnRef) or not node.fields:
            return ()
        names = _names(node.fields)
        if isinstance(node.fields[-1], ast.A_Star):
            return find_relations(scope, names) if names and len(names) == len(node.fields) - 1 else ()
        if len(names) == 1 and len(node.fields) == 1 and find_column(scope, names[0]) is None:
            return find_relations(scope, names)
        return ()

    def func_call(self, node: ast.FuncCall, scope: Scope) -> Value:
        """Plain calls are computations over their arguments; aggregates and window calls are not plain."""
        schema, name = function_name(node)
        self.calls.add((schema, name))
        if name in OUT_OF_SIGHT_FUNCTIONS:
            return self.out_of_sight(node, scope)
        builtin = is_builtin(schema)
        if builtin and name in SET_RETURNING_FUNCTIONS:
            # In a target list it multiplies rows: its arguments decide how many.
            arguments = [self.expr(argument, scope) for argument in node.args or ()]
            self.shape_rows(arguments)
            return self.compute(arguments)
        if node.over is not None:
            return self.window_call(node, scope, name if builtin else None)
        known = name if builtin and name in COUNT_AGGREGATES | VALUE_AGGREGATES else None
        if known is not None or _aggregate_syntax(node):
            return self.aggregate(node, scope, known)
        return self.computed(node, scope)

    def out_of_sight(self, node: ast.FuncCall, scope: Scope) -> Value:
        """A function that reads data the statement does not name: its result cannot be traced."""
        arguments = self.compute(self.expr(argument, scope) for argument in node.args or ())
        display = ".".join(part for part in function_name(node) if part)
        return self.unknown(f"{display}() reads data that lineage cannot follow", arguments)

    def aggregate(self, node: ast.FuncCall, scope: Scope, known: str | None) -> Value:
        """count -> COUNT; value-returning aggregates -> AGGREGATE; FILTER and ordering leak by inference.

        For ordered-set aggregates (``mode() WITHIN GROUP (ORDER BY x)``) the
        ORDER BY values are the aggregated values themselves.
        """
        self.filter(node.agg_filter, scope)
        arguments = [self.expr(argument, scope) for argument in node.args or ()]
        ordering = [
            self.expr(sort.node if isinstance(sort, ast.SortBy) else sort, scope) for sort in node.agg_order or ()
        ]
        if node.agg_within_group:
            arguments.extend(ordering)
        else:
            for value in ordering:
                self.leak(value)
        self.compute(arguments)
        return _aggregated(arguments, known)

    def window_call(self, node: ast.FuncCall, scope: Scope, builtin_name: str | None) -> Value:
        """``f(...) OVER (...)``: the window's PARTITION BY / ORDER BY leak by inference."""
        self.window(node.over, scope)
        self.filter(node.agg_filter, scope)
        for sort in node.agg_order or ():
            self.filter(sort.node if isinstance(sort, ast.SortBy) else sort, scope)
        arguments = [self.expr(argument, scope) for argument in node.args or ()]
        if builtin_name is None or builtin_name in WINDOW_FUNCTIONS:
            return self.compute(arguments)
        self.compute(arguments)
        return _aggregated(arguments, builtin_name if builtin_name in COUNT_AGGREGATES | VALUE_AGGREGATES else None)

    def json_aggregate(self, node: ast.JsonArrayAgg | ast.JsonObjectAgg, scope: Scope) -> Value:
        """JSON_ARRAYAGG / JSON_OBJECTAGG: aggregates of their argument values."""
        constructor = node.constructor
        if constructor is not None:
            self.filter(constructor.agg_filter, scope)
            for sort in constructor.agg_order or ():
                self.filter(sort.node if isinstance(sort, ast.SortBy) else sort, scope)
            if constructor.over is not None:
                self.window(constructor.over, scope)
        argument = node.arg
        if isinstance(argument, ast.JsonKeyValue):
            values = [self.expr(argument.key, scope), self.expr(argument.value, scope)]
        else:
            values = [self.expr(argument, scope)]
        self.compute(values)
        return _aggregated(values, "json_agg")

    def json_array_query(self, node: ast.JsonArrayQueryConstructor, scope: Scope) -> Value:
        """JSON_ARRAY(SELECT ...): an array of the subquery's values."""
        return self.compute(column.value for column in self.query(node.query, scope))

    def sublink(self, node: ast.SubLink, scope: Scope) -> Value:
        """Subqueries in expressions: scalar ones pass their value through, EXISTS reveals only existence."""
        columns = self.query(node.subselect, scope)
        if columns and not columns[0].placeholder:
            self.sublink_names[id(node)] = (node, columns[0].name)
        values = [column.value for column in columns]
        kind = node.subLinkType
        single = len(columns) == 1 and not columns[0].placeholder
        if kind == enums.SubLinkType.EXISTS_SUBLINK:
            return COMPUTED
        if kind == enums.SubLinkType.EXPR_SUBLINK:
            return values[0] if single else self.unknown("scalar subquery without exactly one column", merge(values))
        if kind == enums.SubLinkType.ARRAY_SUBLINK:
            value = self.compute(values)
            return value if single else self.unknown("ARRAY subquery without exactly one column", value)
        if kind in (enums.SubLinkType.ANY_SUBLINK, enums.SubLinkType.ALL_SUBLINK, enums.SubLinkType.ROWCOMPARE_SUBLINK):
            return self.compute([self.expr(node.testexpr, scope), *values])
        tested = self.expr(node.testexpr, scope)
        return self.unknown(f"unsupported subquery kind {kind}", self.compute([tested, *values]))

    def case(self, node: ast.CaseExpr, scope: Scope) -> Value:
        """CASE: the value is one of the results; the conditions leak by inference."""
        self.filter(node.arg, scope)
        results: list[Value] = []
        for when in node.args or ():
            if isinstance(when, ast.CaseWhen):
                self.filter(when.expr, scope)
                results.append(self.expr(when.result, scope))
            else:
                results.append(self.opaque(when, scope, f"unsupported CASE arm {type(when).__name__}"))
        results.append(self.expr(node.defresult, scope))
        value = merge(results)
        return Value(value.sources, Derivation.TRANSFORMED, value.unknown)

    def indirection(self, node: ast.A_Indirection, scope: Scope) -> Value:
        """Subscripts and field selection; ``(p).ssn`` on a whole row is exactly p.ssn."""
        items = list(node.indirection or ())
        relations = self.row_relations(node.arg, scope)
        if relations and items and isinstance(items[0], ast.String):
            field = items.pop(0).sval or ""
            found = column_of(relations, field)
            base = found if found is not None else self.unknown(f"field {field} of a row cannot be resolved")
        else:
            base = self.expr(node.arg, scope)
        if not items:
            return base
        parts = [base]
        for item in items:
            if isinstance(item, ast.A_Indices):
                parts.extend((self.expr(item.lidx, scope), self.expr(item.uidx, scope)))
        return self.compute(parts)

    def grouping(self, node: ast.GroupingFunc, scope: Scope) -> Value:
        """GROUPING(x) says whether x is grouped in this row, not what x is."""
        for argument in node.args or ():
            self.filter(argument, scope)
        return COMPUTED


# --------------------------------------------------------------------------
# Helpers without analyzer state
# --------------------------------------------------------------------------


def _is_literal(node: object) -> bool:
    """A value written in (or bound to) the statement: anything inert but a NULL or a type name."""
    if isinstance(node, ast.A_Const):
        return not node.isnull
    return isinstance(node, ast.ParamRef | ast.SQLValueFunction | ast.String | ast.Integer | ast.Float | ast.BitString)


def _ends_with_star(items: Sequence[object] | None) -> bool:
    """Whether a field list ends with ``*``."""
    if not items:
        return False
    return isinstance(items[-1], ast.A_Star)


def _alias_columns(alias: ast.Alias | None) -> tuple[str, ...]:
    """Column aliases of ``AS t(a, b)``."""
    return _names(alias.colnames) if alias is not None else ()


def _named_item(name: str | None, columns: tuple[Column, ...], schema: str | None = None) -> FromItem:
    """A FROM item that is a single (possibly unnamed) relation."""
    relations = (Relation(name, schema, columns),) if name else ()
    return FromItem(columns, relations)


def _opaque_item(value: Value) -> FromItem:
    """A FROM item nothing is known about."""
    return FromItem((placeholder(value),), ())


def _first_function_name(entries: Sequence[object]) -> str | None:
    """PostgreSQL names an unaliased function RTE after its (first) function."""
    for entry in entries:
        call = entry[0] if isinstance(entry, tuple | list) else entry
        if isinstance(call, ast.FuncCall):
            return function_name(call)[1]
    return None


def _grouping_sets(group_clause: object) -> Iterator[ast.GroupingSet]:
    """Every GROUPING SETS / ROLLUP / CUBE node of a GROUP BY clause, nested ones included."""
    stack: list[object] = [group_clause]
    while stack:
        current = stack.pop()
        if isinstance(current, tuple | list):
            stack.extend(current)
        elif isinstance(current, ast.GroupingSet):
            yield current
            stack.append(current.content)


def _json_table_columns(columns: object) -> Iterator[ast.JsonTableColumn]:
    """JSON_TABLE columns in order, NESTED PATH column lists flattened."""
    for column in _flatten(columns):
        if not isinstance(column, ast.JsonTableColumn):
            continue
        if column.coltype == enums.JsonTableColumnType.JTC_NESTED:
            yield from _json_table_columns(column.columns)
        else:
            yield column


def _aggregate_syntax(node: ast.FuncCall) -> bool:
    """Syntax only aggregates accept: *, DISTINCT, ORDER BY, FILTER, WITHIN GROUP."""
    return bool(node.agg_star or node.agg_distinct or node.agg_order or node.agg_filter or node.agg_within_group)


def _aggregated(arguments: Sequence[Value], known: str | None) -> Value:
    """The value of an aggregate over ``arguments``.

    count reveals cardinality whatever it counts; a known value-returning
    aggregate stays AGGREGATE unless its input was itself transformed (then
    the result can be any transformation of the data).  Aggregates we do not
    know (user-defined) may compute anything.
    """
    value = merge(arguments) if arguments else CONSTANT
    if known in COUNT_AGGREGATES:
        derivation = Derivation.COUNT
    elif known is None or any(
        argument.derivation is Derivation.TRANSFORMED and (argument.sources or argument.unknown)
        for argument in arguments
    ):
        derivation = Derivation.TRANSFORMED
    else:
        derivation = Derivation.AGGREGATE
    return Value(value.sources, derivation, value.unknown)


def _is_computed(node: object) -> bool:
    """Whether a node's value is a plain computation over its listed children (walked without recursion)."""
    if type(node) not in _COMPUTED_CHILDREN or type(node) in _PASS_THROUGH:
        return False
    if not isinstance(node, ast.FuncCall):
        return True
    schema, name = function_name(node)
    set_returning = is_builtin(schema) and name in SET_RETURNING_FUNCTIONS
    special = _aggregate_syntax(node) or _is_known_aggregate(node) or name in OUT_OF_SIGHT_FUNCTIONS or set_returning
    return node.over is None and not special


def _is_known_aggregate(node: ast.FuncCall) -> bool:
    """A built-in aggregate called without aggregate-only syntax (``max(x)``)."""
    schema, name = function_name(node)
    return is_builtin(schema) and name in COUNT_AGGREGATES | VALUE_AGGREGATES


def _computed_children(node: object) -> Iterator[object]:
    """The value-carrying children of a computed node, lists flattened."""
    for attribute in _COMPUTED_CHILDREN.get(type(node), ()) if isinstance(node, ast.Node) else ():
        yield from _flatten(getattr(node, attribute, None))


def _descendants(node: object) -> Iterator[object]:
    """Every node under ``node`` (itself included), iteratively."""
    stack: list[object] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, tuple | list):
            stack.extend(current)
        elif isinstance(current, ast.Node):
            yield current
            stack.extend(getattr(current, attribute) for attribute in current)


def _output(column: Column, use: _TargetUse | None) -> OutputColumn:
    """Public form of a result column, with its target-list item and effects when it has one of its own."""
    value = column.value
    unknown = value.unknown or column.placeholder
    derivation = Derivation.TRANSFORMED if unknown else value.derivation
    if use is None:
        return OutputColumn(column.name, value.sources, derivation, unknown, foreign=value.foreign)
    effects = use.effects
    return OutputColumn(
        column.name,
        value.sources,
        derivation,
        unknown,
        foreign=value.foreign,
        target=use.index,
        inner_filters=effects.filters,
        computed_on=effects.computed_on,
        calls=effects.calls,
    )


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------


def analyze(sql: str, catalog: RelationCatalog) -> Lineage:
    """Lineage of one SELECT / VALUES / TABLE / set-operation statement.

    Raises pglast's ParseError for unparsable input and UnsupportedStatement
    for anything else (DML, DDL, EXPLAIN, SELECT INTO, writable CTEs,
    several statements, trees too deep to analyze).
    """
    return analyze_select(_parse_select(sql), catalog)


def analyze_select(statement: ast.SelectStmt, catalog: RelationCatalog) -> Lineage:
    """``analyze`` for an already parsed SELECT (the query of DECLARE CURSOR or EXPLAIN, say)."""
    if statement.intoClause is not None:
        raise UnsupportedStatement("SELECT INTO creates a table")
    analyzer = _Analyzer(catalog)
    try:
        columns = analyzer.query(statement, Scope.root(), top=True)
    except RecursionError as error:  # a last resort: the depth budget should always trigger first
        raise UnsupportedStatement("statement is nested too deeply to analyze") from error
    uses: Sequence[_TargetUse | None] = analyzer.top_targets
    if len(uses) != len(columns):
        # Not a plain SELECT (set operation, VALUES): its effects were counted where they happened.
        uses = [None] * len(columns)
    outputs = tuple(_output(column, use) for column, use in zip(columns, uses, strict=True))
    if any(output.unknown for output in outputs) and not analyzer.reasons:
        analyzer.note("lineage of some output columns is unknown")
    return Lineage(
        outputs=outputs,
        filters=frozenset(analyzer.filters),
        relations=frozenset(analyzer.relations),
        unknown_reasons=tuple(analyzer.reasons),
        computed_on=frozenset(analyzer.computed_on),
        calls=frozenset(analyzer.calls),
    )
