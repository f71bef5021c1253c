"""policy.exposure against a real server's catalog: every listed name exists, and nothing that exposes is missing.

The list is only as good as its names: a misspelt function would never match, and a view PostgreSQL adds in a
new version would go unnoticed. So every entry is looked up in pg_class/pg_proc (extension entries in a scratch
database where their extensions are created), and every catalog relation or function with a column that
carries statement text, stored values or secrets must be on the list, denied by the classifier's function
denylist, or reviewed below with the reason it exposes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from policy.classifier import DENIED_FUNCTIONS
from policy.exposure import (
    ANY_SCHEMA,
    EXPOSING_OBJECTS,
    ExposingObject,
    ObjectKind,
    exposing_function,
    exposing_relation,
)
from tests import environment

# Column (or OUT argument) names under which PostgreSQL and its contrib extensions return statement text,
# stored values or secrets.
SENSITIVE_COLUMNS = (
    "query",
    "statement",
    "conninfo",
    "subconninfo",
    "umoptions",
    "option_value",
    "rolpassword",
    "passwd",
    "stavalues1",
    "most_common_vals",
    "most_common_elems",
    "histogram_bounds",
    "values",
    "value",
    "data",
    "t_data",
    "t_attrs",
    "keys",
    "key_data",
    "block_data",
    "block_fpi_data",
    "ident",
    "setting",
)

# Reviewed: a sensitive column name, but nothing masks would have to cover.
REVIEWED: dict[tuple[ObjectKind, str], str] = {
    (ObjectKind.RELATION, "pg_roles"): "rolpassword is always ********",
    (ObjectKind.RELATION, "pg_user"): "passwd is always ********",
    (ObjectKind.RELATION, "pg_settings"): "this session's settings; PostgreSQL hides superuser-only values",
    (ObjectKind.FUNCTION, "pg_show_all_settings"): "the function behind pg_settings",
    (ObjectKind.RELATION, "pg_config"): "build options of the server",
    (ObjectKind.FUNCTION, "pg_config"): "the function behind pg_config",
    (ObjectKind.RELATION, "column_options"): "FDW column options: remote names, never passwords",
    (ObjectKind.RELATION, "foreign_data_wrapper_options"): "FDW options, never passwords",
    (ObjectKind.RELATION, "foreign_server_options"): "host and database names; postgres_fdw refuses passwords here",
    (ObjectKind.RELATION, "foreign_table_options"): "remote table names",
    (ObjectKind.FUNCTION, "pg_options_to_table"): "splits the option array it is given",
    (ObjectKind.FUNCTION, "ssl_extension_info"): "extensions of this connection's own client certificate",
}

_RELATIONS_WITH_COLUMNS = """
SELECT DISTINCT n.nspname, c.relname
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attname = ANY(%s) AND (n.nspname IN ('pg_catalog', 'information_schema') OR c.oid IN (
      SELECT objid FROM pg_depend WHERE classid = 'pg_class'::regclass AND deptype = 'e'))
"""
# Immutable functions compute only from their arguments (json_each's "value"), so they cannot read anything.
_FUNCTIONS_WITH_ARGUMENTS = """
SELECT DISTINCT n.nspname, p.proname
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.proargnames && %s::text[] AND p.provolatile <> 'i' AND (n.nspname = 'pg_catalog' OR p.oid IN (
      SELECT objid FROM pg_depend WHERE classid = 'pg_proc'::regclass AND deptype = 'e'))
"""
_RELATION_EXISTS = """
SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = %(name)s AND (n.nspname = %(schema)s OR %(schema)s = '*')
"""
_FUNCTION_EXISTS = """
SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.proname = %(name)s AND (n.nspname = %(schema)s OR %(schema)s = '*')
"""

EXTENSIONS = sorted({entry.extension for entry in EXPOSING_OBJECTS if entry.extension})


@pytest.fixture(scope="module")
def scratch() -> Iterator[psycopg.Connection]:
    """A throwaway database with every contrib extension the list names (those the server has) created."""
    name = f"exposure_probe_{environment.RUN_ID}"
    with psycopg.connect(environment.ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(environment.db_url(name), autocommit=True) as conn:
            available = {row[0] for row in conn.execute("SELECT name FROM pg_available_extensions").fetchall()}
            for extension in EXTENSIONS:
                if extension in available:
                    conn.execute(f'CREATE EXTENSION IF NOT EXISTS "{extension}"')
            yield conn
    finally:
        with psycopg.connect(environment.ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _installed(conn: psycopg.Connection, extension: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_extension WHERE extname = %s", (extension,)).fetchone() is not None


@pytest.mark.parametrize("entry", EXPOSING_OBJECTS, ids=lambda entry: f"{entry.kind}:{entry.name}")
def test_every_listed_name_exists_on_the_server(scratch: psycopg.Connection, entry: ExposingObject) -> None:
    """A name that matches nothing protects nothing: each entry is in pg_class or pg_proc, in its schema."""
    version = int(scratch.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
    query = _RELATION_EXISTS if entry.kind is ObjectKind.RELATION else _FUNCTION_EXISTS
    found = scratch.execute(query, {"name": entry.name, "schema": entry.schema}).fetchone()
    if entry.since > version:
        # A newer server's name: its version note must be right, so this server must not have it yet.
        assert found is None, f"{entry.display} exists before server version {entry.since}"
        return
    if entry.extension is not None and not _installed(scratch, entry.extension):
        # An extension this server does not ship: its objects cannot be here either.
        assert found is None, f"{entry.display} exists without extension {entry.extension}"
        return
    assert found is not None, f"{entry.display} does not exist on this server"
    assert (entry.extension is None) == (entry.schema != ANY_SCHEMA), "extension objects match in every schema"


def _covered(kind: ObjectKind, schema: str, name: str) -> bool:
    if kind is ObjectKind.RELATION:
        return exposing_relation(schema, name) is not None or (kind, name) in REVIEWED
    return exposing_function(schema, name) is not None or name in DENIED_FUNCTIONS or (kind, name) in REVIEWED


def test_no_catalog_object_that_returns_text_values_or_secrets_is_missing(scratch: psycopg.Connection) -> None:
    """Every relation and function with a sensitive output column is listed, denied, or reviewed."""
    columns = list(SENSITIVE_COLUMNS)
    relations = scratch.execute(_RELATIONS_WITH_COLUMNS, (columns,)).fetchall()
    functions = scratch.execute(_FUNCTIONS_WITH_ARGUMENTS, (columns,)).fetchall()
    assert ("pg_catalog", "pg_stats") in relations and ("pg_catalog", "pg_stat_get_activity") in functions
    missing = [f"relation {s}.{n}" for s, n in relations if not _covered(ObjectKind.RELATION, s, n)]
    missing += [f"function {s}.{n}()" for s, n in functions if not _covered(ObjectKind.FUNCTION, s, n)]
    assert not missing, "catalog objects exposing text, values or secrets are not in policy.exposure: " + ", ".join(
        missing
    )


def test_reviewed_exceptions_exist_and_are_not_listed(scratch: psycopg.Connection) -> None:
    """The review list stays honest: no stale names, and nothing both reviewed and listed."""
    for (kind, name), _why in REVIEWED.items():
        listed = exposing_relation(None, name) if kind is ObjectKind.RELATION else exposing_function(None, name)
        assert listed is None, f"{name} is both listed and reviewed"
    relation_names = {row[0] for row in scratch.execute("SELECT relname FROM pg_class").fetchall()}
    function_names = {row[0] for row in scratch.execute("SELECT proname FROM pg_proc").fetchall()}
    for kind, name in REVIEWED:
        if (kind, name) == (ObjectKind.FUNCTION, "ssl_extension_info"):
            continue  # sslinfo is not among the extensions created here
        assert name in (relation_names if kind is ObjectKind.RELATION else function_names), name


@pytest.mark.parametrize(
    ("schema", "name", "listed"),
    [
        (None, "pg_stats", True),
        ("pg_catalog", "pg_stats", True),
        ("PG_CATALOG", "PG_STATS", True),
        ("public", "pg_stats", False),  # a user table of the same name, qualified
        (None, "user_mapping_options", True),
        ("information_schema", "user_mapping_options", True),
        ("pg_catalog", "user_mapping_options", False),
        ("monitoring", "pg_stat_statements", True),  # extensions install anywhere
        (None, "pg_class", False),
    ],
)
def test_relation_matching(schema: str | None, name: str, listed: bool) -> None:
    """Unqualified names always match; qualified ones in their home schema (any schema for extensions)."""
    assert (exposing_relation(schema, name) is not None) is listed


@pytest.mark.parametrize(
    ("schema", "name", "listed"),
    [
        (None, "pg_stat_get_activity", True),
        ("pg_catalog", "pg_stat_get_activity", True),
        ("public", "pg_stat_get_activity", False),
        ("inspect", "get_raw_page", True),
        (None, "pg_stat_get_backend_pid", False),
        (None, "pg_stats", False),  # a relation, not a function
    ],
)
def test_function_matching(schema: str | None, name: str, listed: bool) -> None:
    """Functions follow the same rules as relations."""
    assert (exposing_function(schema, name) is not None) is listed
