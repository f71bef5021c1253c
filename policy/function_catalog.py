"""Function volatility snapshots read from a live PostgreSQL catalog.

The classifier only lets a read run without human approval when every
function it calls is provably free of side effects.  PostgreSQL records that
promise in ``pg_proc.provolatile``; this module copies it into an immutable
in-memory snapshot so classification never needs a database round trip and
can be shared between threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

# Volatility codes as stored in pg_proc.provolatile, least to most volatile.
_VOLATILITY_RANK: Mapping[str, int] = MappingProxyType({"i": 0, "s": 1, "v": 2})

_CATALOG_SCHEMA = "pg_catalog"

# Every pg_proc row counts: plain functions, aggregates, window functions and
# procedures all share one namespace for name resolution, so a name that is
# an aggregate in one overload and a volatile function in another must be
# reported as volatile.  PostgreSQL records every aggregate as immutable in
# pg_proc and keeps the real code in its support functions, so an aggregate
# is rated by the most volatile of those as well.
_FUNCTIONS_QUERY = """
    SELECT n.nspname, p.proname, p.provolatile::text, support.volatility
    FROM pg_catalog.pg_proc AS p
    JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
    LEFT JOIN pg_catalog.pg_aggregate AS a ON a.aggfnoid = p.oid
    LEFT JOIN LATERAL (
        SELECT max(s.provolatile::text) AS volatility
        FROM pg_catalog.pg_proc AS s
        WHERE s.oid IN (
            a.aggtransfn::oid, a.aggfinalfn::oid, a.aggcombinefn::oid, a.aggserialfn::oid,
            a.aggdeserialfn::oid, a.aggmtransfn::oid, a.aggminvtransfn::oid, a.aggmfinalfn::oid
        )
    ) AS support ON true
"""


def most_volatile(first: str | None, second: str | None) -> str | None:
    """Return the more volatile of two codes, treating None as "no function".

    An unrecognised code outranks everything: the snapshot must never make a
    function look safer than PostgreSQL says it is.
    """
    if first is None:
        return second
    if second is None:
        return first
    return first if _rank(first) >= _rank(second) else second


def _rank(code: str) -> int:
    """Rank a volatility code; unknown codes rank above volatile (fail closed)."""
    return _VOLATILITY_RANK.get(code, len(_VOLATILITY_RANK))


@dataclass(frozen=True)
class SnapshotFunctionCatalog:
    """A FunctionCatalog backed by a snapshot of pg_proc.

    Immutable after construction (callers should pass a read-only mapping;
    ``load_function_catalog`` does), so one instance can serve every request
    thread without locking.
    """

    by_qualified_name: Mapping[tuple[str, str], str]
    search_path: tuple[str, ...] = (_CATALOG_SCHEMA, "public")

    def volatility(self, schema: str | None, name: str) -> str | None:
        """Volatility of ``schema.name`` (or of ``name`` via the search path).

        Unqualified names are answered conservatively: the most volatile match
        in any schema of the search path wins, because the session's real
        search path (and therefore which overload PostgreSQL picks) is not
        known at classification time.
        """
        if schema is not None:
            return self.by_qualified_name.get((schema, name))
        found: str | None = None
        for candidate_schema in self._resolution_schemas():
            found = most_volatile(found, self.by_qualified_name.get((candidate_schema, name)))
        return found

    def _resolution_schemas(self) -> tuple[str, ...]:
        """Schemas searched for unqualified names.

        PostgreSQL always searches pg_catalog (first, unless the path names it
        later), so it is added when a caller leaves it out.
        """
        if _CATALOG_SCHEMA in self.search_path:
            return self.search_path
        return (_CATALOG_SCHEMA, *self.search_path)


def build_snapshot(rows: Iterable[tuple[str, str, str]], search_path: Sequence[str]) -> SnapshotFunctionCatalog:
    """Fold (schema, name, volatility) rows into a snapshot.

    Overloads share a name, so each name keeps its most volatile overload:
    the classifier sees names, not resolved signatures.
    """
    merged: dict[tuple[str, str], str] = {}
    for schema, name, code in rows:
        key = (schema, name)
        merged[key] = most_volatile(merged.get(key), code) or code
    return SnapshotFunctionCatalog(
        by_qualified_name=MappingProxyType(merged),
        search_path=_normalised_search_path(search_path),
    )


def _normalised_search_path(search_path: Sequence[str]) -> tuple[str, ...]:
    """Put pg_catalog first and drop duplicates, mirroring PostgreSQL's lookup."""
    ordered = [_CATALOG_SCHEMA, *search_path]
    return tuple(dict.fromkeys(ordered))


def load_function_catalog(
    conn: psycopg.Connection[Any], search_path: Sequence[str] = (_CATALOG_SCHEMA, "public")
) -> SnapshotFunctionCatalog:
    """Read pg_proc joined to pg_namespace into a SnapshotFunctionCatalog.

    Reads all kinds of routines: functions, aggregates, window functions and
    procedures.  The caller owns ``conn`` and its transaction; this only
    runs one catalog query on it.
    """
    with conn.cursor() as cursor:
        cursor.execute(_FUNCTIONS_QUERY)
        rows = [
            (str(schema), str(name), most_volatile(str(own), support) or str(own))
            for schema, name, own, support in cursor.fetchall()
        ]
    return build_snapshot(rows, search_path)
