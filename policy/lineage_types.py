"""Public result types of the column lineage analyzer (re-exported by policy.lineage).

They live in their own module so the analyzer's helper modules can share them
without importing policy.lineage (which imports the helpers).  Nothing here
knows about pglast: callers that only consume lineage never need the parser.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, order=True)
class SourceColumn:
    """One column of a base table (never a view or CTE) that a value can come from.

    Names are lower-cased so that masking rules keyed on catalog names match
    however the agent spelled (or quoted) the identifier.
    """

    schema: str
    table: str
    column: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"


class Derivation(enum.StrEnum):
    """How a result value relates to its source values.

    The masker needs this to pick a mask: a DIRECT value is exactly some
    source value, so the source column's own mask fits it; anything else may
    have a different shape (a substring, a hash, a JSON document of a whole
    row) and needs a mask that does not rely on the source's format.

    When a value may come from several paths (UNION arms, CASE results, a
    USING column) equal derivations stay, COUNT with AGGREGATE gives
    AGGREGATE, and any other mix is TRANSFORMED.  Stacked operations keep the
    least constrained one: count(anything) is COUNT, an aggregate of a
    computed value (``max(ssn || '')``, ``json_agg(p.*)``) is TRANSFORMED,
    and anything computed from an aggregate is TRANSFORMED.
    """

    DIRECT = "direct"
    TRANSFORMED = "transformed"
    AGGREGATE = "aggregate"
    COUNT = "count"


@dataclass(frozen=True)
class OutputColumn:
    """Lineage of one result column.

    ``unknown`` means lineage could not be established: ``sources`` then lists
    only what is known for sure, and the caller must mask the column whatever
    it lists.

    The other fields describe what evaluating the column's expression does
    besides producing its value, so the caller can judge it as a whole:

    * ``target`` is the index of the statement's own top-level target-list
      item the column comes from, when the column can be withheld by
      replacing that item with a constant (policy.withholding); None when it
      cannot (set operations, VALUES, ``*`` expansions, nested queries).
    * ``inner_filters`` and ``computed_on`` are base columns the expression
      uses to decide (CASE conditions, a subquery's WHERE...) or computes on
      (operators, casts, functions, aggregates: anything that can fail or
      take data-dependent time).  They matter only if the expression runs.
    * ``calls`` are the functions the expression calls, as written
      (schema or None, lower-case name), for the caller's trust check.
    """

    name: str
    sources: frozenset[SourceColumn]
    derivation: Derivation
    unknown: bool = False
    target: int | None = None
    # May hold a value that is not a stored source value or NULL (a literal of another set-operation arm...).
    foreign: bool = False
    inner_filters: frozenset[SourceColumn] = frozenset()
    computed_on: frozenset[SourceColumn] = frozenset()
    calls: frozenset[tuple[str | None, str]] = frozenset()


@dataclass(frozen=True)
class Lineage:
    """Lineage of a whole read statement.

    ``filters`` are base columns whose values can leak by inference (the
    agent learns something about them from which rows come back, how many,
    or in which order) without them appearing in any output: WHERE, JOIN,
    GROUP BY, ORDER BY, DISTINCT, set operations that remove duplicates,
    arguments of set-returning functions, LIMIT...

    ``computed_on`` are base columns some expression outside the result's
    own columns computes on (a subquery's output, a view's column, a CTE):
    the computation runs whatever the masks say, so whether it fails, and
    how long it takes, depends on the value.  ``calls`` are the functions
    called there, for the caller's trust check (a function body can read
    anything).
    """

    outputs: tuple[OutputColumn, ...]
    filters: frozenset[SourceColumn]
    relations: frozenset[tuple[str, str]]
    unknown_reasons: tuple[str, ...]
    computed_on: frozenset[SourceColumn] = frozenset()
    calls: frozenset[tuple[str | None, str]] = frozenset()

    @property
    def complete(self) -> bool:
        """True when every output and every inference channel is accounted for."""
        return not self.unknown_reasons and not any(output.unknown for output in self.outputs)


class RelationCatalog(Protocol):
    """What the analyzer needs to know about relations (normally a pg_catalog snapshot)."""

    def resolve(self, schema: str | None, name: str) -> tuple[str, str] | None:
        """(schema, name) of a relation as PostgreSQL would find it (search path for unqualified names), or None."""
        ...

    def columns(self, schema: str, name: str) -> tuple[str, ...] | None:
        """Ordered, non-dropped column names of a table, view or materialized view; None if unknown."""
        ...

    def kind(self, schema: str, name: str) -> str | None:
        """pg_class.relkind: 'r' table, 'p' partitioned, 'v' view, 'm' matview, 'f' foreign, ... or None."""
        ...

    def view_definition(self, schema: str, name: str) -> str | None:
        """The SELECT text of a view or materialized view (pg_get_viewdef), or None."""
        ...


class UnsupportedStatement(ValueError):
    """The statement is not a single plain read (DML, DDL, SELECT INTO, writable CTE, EXPLAIN, a batch...).

    Lineage only makes sense for statements that return rows computed from
    tables; callers reject anything else before it could run.
    """
