"""Decisions for repeated statement shapes, so a read an agent sends again costs microseconds, not a parse.

The key is the statement's token stream with only literal constants blanked (pglast's scanner, ~5 µs), under
the exact catalog snapshot the decision was made with. Identifiers stay as written, schema included, which
pglast's fingerprint does not guarantee (it folds ``a.t`` and ``b.t`` together). Only ALLOWED plain SELECTs are
cached: in a SELECT a constant's value cannot change what runs or what the masking plan sees (functions and
relations are identifiers), while held and denied statements are rare and re-decided every time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pglast import parser

from gateway.pipeline import Decision
from policy.target_catalog import TargetCatalog

_CONSTANTS = frozenset({"ICONST", "FCONST", "SCONST", "BCONST", "XCONST", "USCONST"})
CACHEABLE_TYPES = frozenset({"SELECT"})
MAX_ENTRIES = 10_000

Shape = tuple[bytes | str, ...]


def statement_shape(sql: str) -> Shape | None:
    """Tokens with constants replaced by their kind; None if the text does not even scan."""
    if "\x00" in sql:
        return None
    try:
        tokens = parser.scan(sql)
    except parser.ParseError:
        return None
    raw = sql.encode("utf-8")
    return tuple(token.name if token.name in _CONSTANTS else raw[token.start : token.end + 1] for token in tokens)


@dataclass(frozen=True)
class _Entry:
    decision: Decision
    catalog: TargetCatalog


class DecisionCache:
    """Two levels: the exact text (a repeat costs one dict lookup) and the shape (other literals, ~5 µs per
    100 bytes of SQL to scan). Both keys lead to the same entries and the same validity rules."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: dict[tuple[str, Shape], _Entry] = {}
        self._exact: dict[tuple[str, str], _Entry] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def lookup(self, datasource: str, sql: str, current: TargetCatalog | None) -> tuple[Decision | None, Shape | None]:
        if current is None or not current.datasource_active:
            return None, None
        exact = self._exact.get((datasource, sql))
        if exact is not None and exact.catalog is current:
            self.hits += 1
            return exact.decision, None
        shape = statement_shape(sql)
        if shape is None:
            return None, None
        entry = self._entries.get((datasource, shape))
        if entry is None or entry.catalog is not current:
            self.misses += 1
            return None, shape
        self.hits += 1
        self._remember_text(datasource, sql, entry)
        return entry.decision, shape

    def _remember_text(self, datasource: str, sql: str, entry: _Entry) -> None:
        with self._lock:
            if len(self._exact) >= self.max_entries:
                self._exact.clear()
            self._exact[(datasource, sql)] = entry

    def store(self, datasource: str, shape: Shape | None, decision: Decision) -> None:
        classification = decision.classification
        if shape is None or decision.verdict != "allowed" or classification is None or decision.catalog is None:
            return
        if not set(classification.statement_types) <= CACHEABLE_TYPES:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # cheap bound; the working set refills in microseconds
            self._entries[(datasource, shape)] = _Entry(decision, decision.catalog)
