"""Decisions for repeated statement shapes, so a read an agent sends again costs microseconds, not a parse.

The shape key is PostgreSQL's own normalized text (``pg_query_normalize`` through pglast, about 17 µs for a
500-byte join): literal constants become ``$n`` and every other byte stays as written, so identifiers keep
their schema, which pglast's fingerprint does not guarantee (it folds ``a.t`` and ``b.t`` together). The entry
is only valid under the exact catalog snapshot the decision was made with.

Only ALLOWED plain SELECTs are cached. In a SELECT a constant's value cannot change what runs (functions and
relations are identifiers), with one exception the analyzer cares about: an integer in ``ORDER BY``,
``GROUP BY``, ``DISTINCT ON`` or a grouping set names a result column by position, and sorting or grouping on
a PHI column is an inference leak. Normalization keeps ``ORDER BY 2`` and ``GROUP BY 2`` as written, but
replaces constants inside ``DISTINCT ON (...)`` and ``ROLLUP/CUBE/GROUPING SETS``; decisions for statements
with a constant there are therefore never stored by shape. A text that already contains ``$`` (a bind
parameter, a dollar-quoted string) is not keyed by shape either, so a ``$n`` in a key always stands for a
constant of the original text and never collides with a real parameter.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pglast import ast, parser
from pglast.visitors import Visitor

from gateway.pipeline import Decision
from policy.parse_depth import TooDeep, parse_statements
from policy.target_catalog import TargetCatalog

CACHEABLE_TYPES = frozenset({"SELECT"})
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Shape:
    """A statement's normalized text, and the text it came from (needed to vet it before storing)."""

    normalized: str
    sql: str


def statement_shape(sql: str) -> Shape | None:
    """The normalized form, or None when the text cannot be keyed by shape (see the module docstring)."""
    if "$" in sql:
        return None
    try:
        return Shape(parser.normalize(sql), sql)
    except parser.ParseError:
        return None


class _PositionalConstantFinder(Visitor):  # type: ignore[misc]
    """Finds a constant used where PostgreSQL may read it as a column position and normalization blanks it."""

    found = False

    def visit_SelectStmt(self, ancestors: object, node: ast.SelectStmt) -> None:
        if any(isinstance(item, ast.A_Const) for item in node.distinctClause or ()):
            self.found = True

    def visit_GroupingSet(self, ancestors: object, node: ast.GroupingSet) -> None:
        if any(isinstance(item, ast.A_Const) for item in node.content or ()):
            self.found = True


def positions_survive_normalization(sql: str) -> bool:
    """True when no constant that may be a result-column position is blanked by normalization."""
    try:
        statements = parse_statements(sql)
    except (parser.ParseError, UnicodeError, TooDeep):
        return False
    finder = _PositionalConstantFinder()
    for statement in statements:
        finder(statement)
    return not finder.found


@dataclass(frozen=True)
class _Entry:
    decision: Decision
    catalog: TargetCatalog


def _keep(key: tuple[str, str], entry: _Entry, datasource: str, current: TargetCatalog) -> bool:
    return key[0] != datasource or entry.catalog is current


class DecisionCache:
    """Two levels: the exact text (a repeat costs one dict lookup) and the shape (other literals, one
    normalization). Both keys lead to the same entries and the same validity rules."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._exact: dict[tuple[str, str], _Entry] = {}
        # The snapshot each data source's entries were made under. Entries of an older one can never hit again,
        # and each holds its snapshot (a few MB with the function catalog): they go when a new one is seen, or
        # every snapshot since the last clear would stay in memory (issue 15's soak).
        self._snapshots: dict[str, TargetCatalog] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def lookup(self, datasource: str, sql: str, current: TargetCatalog | None) -> tuple[Decision | None, Shape | None]:
        """The cached decision, if any, and the key to store a new one under (None: never cache this text).

        Without a usable snapshot (none loaded yet: the first statement a gateway sees) there is no hit, but the
        key is still given, so the decision made next is kept."""
        if "\x00" in sql:
            return None, None
        usable = current is not None and current.datasource_active
        if current is not None and self._snapshots.get(datasource) is not current:
            self._retire(datasource, current)
        exact = self._exact.get((datasource, sql)) if usable else None
        if exact is not None and exact.catalog is current:
            self.hits += 1
            return exact.decision, None
        shape = statement_shape(sql)
        if shape is None:
            self.misses += 1
            return None, Shape("", sql)  # exact text only
        entry = self._entries.get((datasource, shape.normalized)) if usable else None
        if entry is None or entry.catalog is not current:
            self.misses += 1
            return None, shape
        self.hits += 1
        self._remember_text(datasource, sql, entry)
        return entry.decision, shape

    def _retire(self, datasource: str, current: TargetCatalog) -> None:
        """Forget the data source's entries made under any other snapshot than ``current`` (a new one was loaded)."""
        with self._lock:
            if self._snapshots.get(datasource) is current:
                return
            self._snapshots[datasource] = current
            self._entries = {
                key: entry for key, entry in self._entries.items() if _keep(key, entry, datasource, current)
            }
            self._exact = {key: entry for key, entry in self._exact.items() if _keep(key, entry, datasource, current)}

    def _remember_text(self, datasource: str, sql: str, entry: _Entry) -> None:
        with self._lock:
            if len(self._exact) >= self.max_entries:
                self._exact.clear()
            self._exact[(datasource, sql)] = entry

    def store(self, datasource: str, shape: Shape | None, decision: Decision) -> None:
        """Keep an ALLOWED decision under the key ``lookup`` gave."""
        classification = decision.classification
        if shape is None or decision.verdict != "allowed" or classification is None or decision.catalog is None:
            return
        if not set(classification.statement_types) <= CACHEABLE_TYPES:
            return
        entry = _Entry(decision, decision.catalog)
        self._remember_text(datasource, shape.sql, entry)
        if decision.run_sql is not None:
            return  # the text that runs was written from this exact text (its literals included)
        if not shape.normalized or not positions_survive_normalization(shape.sql):
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # cheap bound; the working set refills in microseconds
            self._entries[(datasource, shape.normalized)] = entry
