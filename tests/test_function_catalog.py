"""Tests for policy.function_catalog.

The snapshot logic is unit-tested in memory; loading is tested against the
real local PostgreSQL, because the point of the catalog is to agree with
pg_proc exactly.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from policy.classifier import Verdict, classify
from policy.function_catalog import (
    SnapshotFunctionCatalog,
    build_snapshot,
    load_function_catalog,
    most_volatile,
)

DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


# --------------------------------------------------------------------------
# In-memory snapshot behaviour
# --------------------------------------------------------------------------


def snapshot(
    *rows: tuple[str, str, str], search_path: tuple[str, ...] = ("pg_catalog", "public")
) -> SnapshotFunctionCatalog:
    """A snapshot built from literal rows."""
    return build_snapshot(rows, search_path)


def test_qualified_lookup_is_exact() -> None:
    """A schema-qualified name only matches that schema."""
    catalog = snapshot(("app", "f", "v"), ("public", "f", "i"))
    assert catalog.volatility("app", "f") == "v"
    assert catalog.volatility("public", "f") == "i"
    assert catalog.volatility("other", "f") is None


def test_unqualified_lookup_takes_most_volatile_on_search_path() -> None:
    """Unqualified names are judged by their most volatile candidate."""
    catalog = snapshot(("pg_catalog", "f", "i"), ("public", "f", "v"), ("hidden", "g", "v"))
    assert catalog.volatility(None, "f") == "v"
    assert catalog.volatility(None, "g") is None


def test_pg_catalog_is_always_searched() -> None:
    """PostgreSQL searches pg_catalog even when the path leaves it out."""
    catalog = SnapshotFunctionCatalog(by_qualified_name={("pg_catalog", "now"): "s"}, search_path=("public",))
    assert catalog.volatility(None, "now") == "s"
    assert snapshot(search_path=("app",)).search_path == ("pg_catalog", "app")


def test_overloads_fold_to_the_most_volatile() -> None:
    """Overloads share a name; the snapshot keeps the worst of them."""
    catalog = snapshot(("public", "f", "i"), ("public", "f", "v"), ("public", "f", "s"))
    assert catalog.by_qualified_name[("public", "f")] == "v"


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [("i", "s", "s"), ("s", "v", "v"), ("v", "i", "v"), (None, "s", "s"), ("i", None, "i"), ("v", "?", "?")],
)
def test_volatility_ordering(first: str | None, second: str | None, expected: str) -> None:
    """'i' < 's' < 'v', and an unrecognised code outranks them all (fail closed)."""
    assert most_volatile(first, second) == expected


def test_snapshot_is_immutable() -> None:
    """A loaded snapshot can be shared between threads because nothing can change it."""
    catalog = snapshot(("public", "f", "i"))
    with pytest.raises(TypeError):
        catalog.by_qualified_name[("public", "f")] = "v"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalog.search_path = ("evil",)  # type: ignore[misc]


# --------------------------------------------------------------------------
# Loading from the real database
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conn() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the local PostgreSQL."""
    try:
        connection = psycopg.connect(DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.skip(f"local PostgreSQL not reachable at {DSN}: {error}")
    with connection:
        yield connection


@pytest.fixture(scope="module")
def scratch_schema(conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[str]:
    """A throwaway schema holding functions of known volatility, dropped afterwards."""
    name = f"phigate_catalog_test_{uuid.uuid4().hex[:10]}"
    schema = sql.Identifier(name)
    statements = [
        "CREATE SCHEMA {s}",
        "CREATE FUNCTION {s}.touch() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1'",
        "CREATE FUNCTION {s}.calm() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1'",
        "CREATE FUNCTION {s}.mixed(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1'",
        "CREATE FUNCTION {s}.mixed(text) RETURNS int LANGUAGE sql STABLE AS 'SELECT 1'",
        "CREATE PROCEDURE {s}.housekeeping() LANGUAGE sql AS 'SELECT 1'",
        "CREATE AGGREGATE {s}.total(int) (SFUNC = int4pl, STYPE = int)",
        "CREATE FUNCTION {s}.tally(int, int) RETURNS int LANGUAGE sql VOLATILE AS 'SELECT $1 + $2'",
        "CREATE AGGREGATE {s}.noisy_total(int) (SFUNC = {s}.tally, STYPE = int)",
    ]
    try:
        for statement in statements:
            conn.execute(sql.SQL(statement).format(s=schema))
        yield name
    finally:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {s} CASCADE").format(s=schema))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nextval", "v"),
        ("random", "v"),
        ("pg_sleep", "v"),
        ("now", "s"),
        ("lower", "i"),
        ("count", "i"),
        ("row_number", "i"),
        ("phigate_no_such_function", None),
    ],
)
def test_builtin_volatility(conn: psycopg.Connection[tuple[object, ...]], name: str, expected: str | None) -> None:
    """Built-ins resolve unqualified through pg_catalog, with pg_proc's volatility."""
    catalog = load_function_catalog(conn)
    assert catalog.volatility(None, name) == expected
    assert catalog.volatility("pg_catalog", name) == expected


def test_loaded_search_path_starts_with_pg_catalog(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """The loader puts pg_catalog first, as PostgreSQL resolves it."""
    assert load_function_catalog(conn).search_path == ("pg_catalog", "public")
    assert load_function_catalog(conn, ("app",)).search_path == ("pg_catalog", "app")


def test_function_in_new_schema_resolves_when_qualified(
    conn: psycopg.Connection[tuple[object, ...]], scratch_schema: str
) -> None:
    """A user schema's functions are found by qualified name, not via an unrelated path."""
    catalog = load_function_catalog(conn)
    assert catalog.volatility(scratch_schema, "touch") == "v"
    assert catalog.volatility(scratch_schema, "calm") == "i"
    assert catalog.volatility(None, "touch") is None
    on_path = load_function_catalog(conn, ("pg_catalog", "public", scratch_schema))
    assert on_path.volatility(None, "touch") == "v"


def test_overloads_and_all_routine_kinds_are_loaded(
    conn: psycopg.Connection[tuple[object, ...]], scratch_schema: str
) -> None:
    """Overloads fold to the most volatile; procedures and aggregates are present."""
    catalog = load_function_catalog(conn)
    assert catalog.volatility(scratch_schema, "mixed") == "s"
    assert catalog.volatility(scratch_schema, "housekeeping") is not None
    assert catalog.volatility(scratch_schema, "total") == "i"


def test_aggregates_take_the_volatility_of_their_support_functions(
    conn: psycopg.Connection[tuple[object, ...]], scratch_schema: str
) -> None:
    """pg_proc calls every aggregate immutable; a volatile transition function must show."""
    catalog = load_function_catalog(conn)
    assert catalog.volatility(scratch_schema, "noisy_total") == "v"
    verdict = classify(f"select {scratch_schema}.noisy_total(x) from generate_series(1, 3) x", catalog).verdict
    assert verdict is Verdict.HELD


def test_classify_with_real_catalog(conn: psycopg.Connection[tuple[object, ...]], scratch_schema: str) -> None:
    """The real catalog lets safe reads through and holds volatile ones."""
    catalog = load_function_catalog(conn)
    assert classify("select now(), lower('x')", catalog).verdict is Verdict.ALLOWED
    assert classify("select nextval('s')", catalog).verdict is Verdict.HELD
    assert classify(f"select {scratch_schema}.calm()", catalog).verdict is Verdict.ALLOWED
    held = classify(f"select {scratch_schema}.touch()", catalog)
    assert held.verdict is Verdict.HELD
    assert held.reasons == (f"volatile function {scratch_schema}.touch() may have side effects",)
