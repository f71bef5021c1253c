"""Values, FROM-clause namespaces and name resolution for the lineage analyzer.

A Value is what the analyzer knows about one expression: which base columns it
can carry and how.  Values only ever grow toward "more sources, less precise"
when combined, so every approximation made here errs toward masking.

Name resolution follows PostgreSQL's rules closely enough that a reference
resolves to the column PostgreSQL would pick, and where it cannot be sure
(relations whose columns are not known) the result is marked unknown rather
than guessed.  Everything in this module is pure and immutable except
CteBinding, whose state the analyzer advances while it evaluates a WITH query.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from policy.lineage_types import Derivation, SourceColumn

# System columns every table has; they describe row storage, never row content.
SYSTEM_COLUMNS = frozenset({"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"})
PHYSICAL_LOCATION = "ctid"

PLACEHOLDER_NAME = "*"


@dataclass(frozen=True)
class Value:
    """Lineage of one expression: the base columns it may carry and how.

    A constant is DIRECT with no sources.  ``unknown`` marks a value whose
    sources may be incomplete; it is sticky through every combination.
    ``foreign`` marks a value that may be something other than a source's
    stored value or NULL: a literal, a parameter, a computation.  A DIRECT
    column mixed with one (``SELECT mrn ... UNION ALL SELECT '<guess>'``)
    must not be pseudonymised: equal pseudonyms would check the guess.
    """

    sources: frozenset[SourceColumn] = frozenset()
    derivation: Derivation = Derivation.DIRECT
    unknown: bool = False
    foreign: bool = False


CONSTANT = Value()
LITERAL = Value(foreign=True)
COMPUTED = Value(derivation=Derivation.TRANSFORMED, foreign=True)


def join_derivations(derivations: Iterable[Derivation]) -> Derivation:
    """The derivation of a value that may be any one of several values.

    Equal derivations stay as they are; a count mixed with an aggregate is
    still an aggregate of the data; any other mix can only be described as a
    general transformation, the one every masker must handle.
    """
    kinds = set(derivations)
    if not kinds:
        return Derivation.DIRECT
    if len(kinds) == 1:
        return kinds.pop()
    if kinds <= {Derivation.COUNT, Derivation.AGGREGATE}:
        return Derivation.AGGREGATE
    return Derivation.TRANSFORMED


def merge(values: Iterable[Value]) -> Value:
    """A value that is one of several (set-operation arms, USING columns, ambiguous names).

    Only values that carry something decide the derivation: a NULL arm of a
    UNION does not turn a DIRECT column into a computed one.
    """
    collected = tuple(values)
    if len(collected) == 1:
        return collected[0]  # one value is itself (the common case: a name that matches one column)
    carrying = [value for value in collected if value.sources or value.unknown] or list(collected)
    return Value(
        frozenset().union(*(value.sources for value in collected)),
        join_derivations(value.derivation for value in carrying),
        any(value.unknown for value in collected),
        any(value.foreign for value in collected),
    )


def transformed(values: Iterable[Value]) -> Value:
    """A value computed from several values: every source survives, the shape does not."""
    collected = tuple(values)
    return Value(
        frozenset().union(*(value.sources for value in collected)),
        Derivation.TRANSFORMED,
        any(value.unknown for value in collected),
        foreign=True,
    )


def as_unknown(value: Value) -> Value:
    """The same sources, but flagged: lineage beyond them could not be established."""
    return Value(value.sources, Derivation.TRANSFORMED, True, foreign=True)


def base_value(schema: str, table: str, column: str) -> Value:
    """A base-table column as read: DIRECT from itself, names lower-cased for policy lookup."""
    return Value(frozenset({SourceColumn(schema.lower(), table.lower(), column.lower())}))


@dataclass(frozen=True)
class Column:
    """A named column of a relation, subquery or result.

    A placeholder stands for a run of columns that cannot be listed (an
    unknown table, a function without a column definition list): any name may
    match it and its value is always unknown.
    """

    name: str
    value: Value
    placeholder: bool = False


def placeholder(value: Value = CONSTANT) -> Column:
    """A stand-in for columns that cannot be listed, carrying whatever sources are known."""
    return Column(PLACEHOLDER_NAME, as_unknown(value), True)


def has_placeholder(columns: Sequence[Column]) -> bool:
    """Whether the column list's length and names are uncertain."""
    return any(column.placeholder for column in columns)


def everything(columns: Iterable[Column]) -> Value:
    """All that a list of columns can carry, flagged unknown (for lists that cannot be mapped)."""
    return as_unknown(merge(column.value for column in columns))


def rename(columns: tuple[Column, ...], names: Sequence[str]) -> tuple[Column, ...]:
    """Apply column aliases (``AS t(a, b)``, ``WITH c(a, b)``, a view's own names) by position.

    With a placeholder in the list positions are uncertain, so every aliased
    column (and the rest) becomes unknown with all the list's sources.
    """
    if not names:
        return columns
    if has_placeholder(columns):
        value = everything(columns)
        return (*(Column(name, value) for name in names), Column(PLACEHOLDER_NAME, value, True))
    renamed = [Column(name, column.value) for name, column in zip(names, columns, strict=False)]
    return (*renamed, *columns[len(renamed) :])


def whole_row(columns: Sequence[Column]) -> Value:
    """A whole-row reference (``p``, ``p.*``, ``row_to_json(p)``) carries every column."""
    return transformed(column.value for column in columns)


def lookup(columns: Sequence[Column], name: str, base: bool) -> Value | None:
    """A column by name in one column list; None when PostgreSQL would not find it there.

    A placeholder may hide any name, so it answers (unknown) for names not
    listed; a table's system columns carry no row content, except ``ctid``: a
    row's place on disk follows the widths of the rows stored before it, so
    it is computed from every column of the table.
    """
    matches = named(columns, name)
    if matches:
        return merge(matches)
    if base and name == PHYSICAL_LOCATION:
        return whole_row(columns)
    if base and name in SYSTEM_COLUMNS:
        return CONSTANT
    unknowns = [column.value for column in columns if column.placeholder]
    return merge(unknowns) if unknowns else None


def named(columns: Sequence[Column], name: str) -> list[Value]:
    """Values of the listed (non-placeholder) columns called ``name``."""
    return [column.value for column in columns if not column.placeholder and column.name == name]


def combine_arms(arms: Sequence[tuple[Column, ...]]) -> tuple[tuple[Column, ...], bool]:
    """Columns of a set operation (or recursive CTE) from its arms' columns, and whether they lined up.

    Output i may be any arm's column i, so its sources are the union; names
    come from the first arm, as in PostgreSQL.  Arms whose columns cannot be
    lined up make every column unknown with every arm's sources.
    """
    first = arms[0]
    aligned = all(not has_placeholder(arm) and len(arm) == len(first) for arm in arms)
    if aligned:
        combined = tuple(
            Column(column.name, merge(arm[index].value for arm in arms)) for index, column in enumerate(first)
        )
        return combined, True
    value = everything(column for arm in arms for column in arm)
    return tuple(Column(column.name, value, column.placeholder) for column in first), False


@dataclass(frozen=True)
class Relation:
    """Something a qualified reference (``p.ssn``, ``public.patients.ssn``, ``p.*``) can name.

    ``schema`` is set only for relations referenced by their own (unaliased)
    name, which PostgreSQL lets a reference qualify with the schema.
    ``base`` is true for tables, which also expose system columns.
    """

    name: str | None
    schema: str | None
    columns: tuple[Column, ...]
    base: bool = False

    def matches(self, qualifier: Sequence[str]) -> bool:
        """Whether ``qualifier`` ([catalog.][schema.]name) designates this relation."""
        if not qualifier or self.name != qualifier[-1]:
            return False
        return len(qualifier) == 1 or (self.schema is not None and self.schema == qualifier[-2])


@dataclass(frozen=True)
class FromItem:
    """One top-level FROM entry: the columns unqualified names and ``*`` see, and the relations it names.

    For a join, ``columns`` is the join's own column list (USING/NATURAL
    columns merged and listed first) and ``relations`` the tables inside it,
    unless the join has an alias, which hides them.
    """

    columns: tuple[Column, ...]
    relations: tuple[Relation, ...]
    base: bool = False


class CteState(enum.Enum):
    """Where a WITH query is in its (single) evaluation."""

    PENDING = "pending"
    RUNNING = "running"
    ITERATING = "iterating"
    DONE = "done"


class CteBinding:
    """A WITH query, evaluated at most once per analysis.

    Evaluation is lazy so that WITH RECURSIVE queries may refer to siblings
    defined later; while a recursive query iterates, references to it see the
    current approximation of its columns.
    """

    __slots__ = ("columns", "env", "name", "node", "recursive", "state")

    def __init__(self, name: str, node: object, recursive: bool) -> None:
        self.name = name
        self.node = node
        self.recursive = recursive
        self.env: Scope | None = None
        self.state = CteState.PENDING
        self.columns: tuple[Column, ...] = ()


NO_CTES: Mapping[str, CteBinding] = MappingProxyType({})


@dataclass(frozen=True, eq=False)
class Scope:
    """One query level's FROM items, the enclosing levels (for correlation) and the visible WITH queries."""

    items: tuple[FromItem, ...]
    parent: Scope | None
    ctes: Mapping[str, CteBinding]

    @staticmethod
    def root() -> Scope:
        """The scope of a top-level statement or view definition: nothing outside it is visible."""
        return Scope((), None, NO_CTES)

    def nested(self, items: tuple[FromItem, ...] = (), ctes: Mapping[str, CteBinding] | None = None) -> Scope:
        """A deeper level whose outer references resolve through this one."""
        return Scope(items, self, self.ctes if ctes is None else ctes)

    def sibling(self, items: tuple[FromItem, ...]) -> Scope:
        """The same level with a different set of FROM items (lateral and join-qualifier views)."""
        return Scope(items, self.parent, self.ctes)


def find_column(scope: Scope, name: str) -> Value | None:
    """An unqualified column reference, resolved level by level from the innermost outward.

    A known column wins at its level (PostgreSQL would pick it or reject the
    query as ambiguous); columns that might hide in a placeholder make the
    result unknown but do not stop the search outward.
    """
    doubts: list[Value] = []
    level: Scope | None = scope
    while level is not None:
        known: list[Value] = []
        unsure: list[Value] = []
        for item in level.items:
            value = lookup(item.columns, name, item.base)
            if value is None:
                continue
            sure = bool(named(item.columns, name)) or (item.base and name in SYSTEM_COLUMNS)
            (known if sure else unsure).append(value)
        if known:
            # Placeholders beside a known column cannot matter: PostgreSQL would
            # reject the name as ambiguous if they held it.  Placeholders of
            # inner levels can: they would have hidden this level.
            return merge([*known, *doubts])
        doubts.extend(unsure)
        level = level.parent
    return merge(doubts) if doubts else None


def find_relations(scope: Scope, qualifier: Sequence[str]) -> tuple[Relation, ...]:
    """The relations a qualifier names at the innermost level that has any (several = ambiguous)."""
    level: Scope | None = scope
    while level is not None:
        found = tuple(relation for item in level.items for relation in item.relations if relation.matches(qualifier))
        if found:
            return found
        level = level.parent
    return ()


def column_of(relations: Sequence[Relation], name: str) -> Value | None:
    """A named column of the given relation(s); None when none of them has it."""
    values = [value for relation in relations if (value := lookup(relation.columns, name, relation.base)) is not None]
    return merge(values) if values else None


def rows_of(relations: Sequence[Relation]) -> Value:
    """The whole-row value of the given relation(s)."""
    return merge(whole_row(relation.columns) for relation in relations)
