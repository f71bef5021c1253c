"""Catalog introspection through the gateway, as an agent: real clients get real schema metadata.

PostgreSQL's own catalog relations (pg_catalog and information_schema, tables and views alike) hold schema
metadata, not PHI: their columns reach the agent unmasked (``policy.target_catalog``: they are presented to lineage
as base relations). The clinic's PHI columns stay masked in the same sessions, and a user relation that merely
shadows a catalog name (another schema ahead on the search path, a quoted upper-case twin) gets no such trust.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from identity.roles import Role
from policy.catalog_cache import REFRESH_FLOOR_SECONDS, CatalogCache
from policy.credentials import Access
from policy.target_catalog import text_only_adapters
from tests import environment
from tests.factories import agent_client, make_agent, make_user

REDACTED = "[redacted]"
PGJDBC_JAR = Path("/usr/share/java/postgresql.jar")  # Debian: libpostgresql-jdbc-java


@pytest.fixture
def agent(services: Any) -> dict[str, Any]:
    """A fresh agent with its wire DSN (name as user, token as password)."""
    owner = make_user(Role.ENGINEER)
    agent, token = make_agent(owner)
    port = services.gateway_port
    return {
        "agent": agent,
        "token": token,
        "port": port,
        "dsn": f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{port}/clinic",
    }


def as_reader(services: Any, query: str) -> list[tuple[Any, ...]]:
    """What PostgreSQL itself returns to the gateway's read-only role, as text: the truth the agent should see."""
    with psycopg.connect(services.target.read_url, context=text_only_adapters()) as conn:
        return conn.execute(query).fetchall()


@pytest.fixture(scope="module")
def constrained_tables(services: Any) -> Iterator[None]:
    """Two tables with keys whose constraints the read role may see.

    information_schema lists a table's constraints only to a role with some privilege on it other than SELECT
    (PostgreSQL's rule; the clinic's tables show none to the SELECT-only read role, directly or not), so these
    grant REFERENCES too, which a read-only session cannot use.
    """
    reader = environment.READ_ROLE
    with psycopg.connect(services.target.owner_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE catalog_probe_ward (id int PRIMARY KEY, label text UNIQUE)")
        conn.execute(
            "CREATE TABLE catalog_probe_bed (id int PRIMARY KEY, ward_id int NOT NULL "
            "REFERENCES catalog_probe_ward ON DELETE CASCADE)"
        )
        conn.execute(f'GRANT SELECT, REFERENCES ON catalog_probe_ward, catalog_probe_bed TO "{reader}"')
    yield
    with psycopg.connect(services.target.owner_url, autocommit=True) as conn:
        conn.execute("DROP TABLE catalog_probe_bed, catalog_probe_ward")


def real_patient(services: Any, patient_id: int = 1) -> tuple[str, str]:
    """The SSN and full name of one patient, read as the owner (never through the gateway)."""
    with psycopg.connect(services.target.owner_url) as conn:
        row = conn.execute("SELECT ssn, full_name FROM patients WHERE id = %s", (patient_id,)).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def assert_masked_patient(services: Any, ssn: object, full_name: object, patient_id: int = 1) -> None:
    """The agent's view of one patient: last four of the SSN, a pseudonym for the name."""
    real_ssn, real_name = real_patient(services, patient_id)
    assert ssn == "***" + real_ssn[-4:]
    assert isinstance(full_name, str) and full_name.startswith("name_") and real_name not in full_name


def flat(rows: object) -> str:
    return repr(rows)


# --------------------------------------------------------------------------------------------------------------
# psql
# --------------------------------------------------------------------------------------------------------------


def psql(dsn: str, *commands: str) -> str:
    env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
    args = ["psql", dsn, "-X", "-v", "ON_ERROR_STOP=1"]
    for command in commands:
        args += ["-c", command]
    run = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_psql_describe_commands_show_real_catalog_values(services: Any, agent: dict[str, Any]) -> None:
    roles = psql(agent["dsn"], r"\du")
    assert REDACTED not in roles
    assert environment.READ_ROLE in roles and environment.WRITE_ROLE in roles
    assert "Superuser" in roles  # the bootstrap superuser's attributes, from pg_catalog.pg_roles

    tables = psql(agent["dsn"], r"\dt")
    assert REDACTED not in tables
    for table in ("patients", "encounters", "prescriptions", "diagnosis_codes"):
        assert f"| {table} " in tables
    assert environment.WRITE_ROLE in tables  # the owner column

    described = psql(agent["dsn"], r"\d patients")
    assert REDACTED not in described
    assert "date_of_birth" in described and "not null" in described
    assert '"patients_pkey" PRIMARY KEY, btree (id)' in described
    assert "encounters_patient_id_fkey" in described and "REFERENCES patients(id)" in described

    real_ssn, _ = real_patient(services)
    phi = psql(agent["dsn"], "SELECT ssn FROM patients WHERE id = 1")
    assert "***" + real_ssn[-4:] in phi and real_ssn not in phi


# --------------------------------------------------------------------------------------------------------------
# SQLAlchemy (psycopg 3 dialect)
# --------------------------------------------------------------------------------------------------------------


def test_sqlalchemy_reflects_keys_and_columns(services: Any, agent: dict[str, Any]) -> None:
    """The inspector reads pg_catalog's base tables; reflected catalog *views* are what used to come back redacted."""
    from sqlalchemy import MetaData, Table, create_engine, inspect, select, text

    url = (
        f"postgresql+psycopg://{agent['agent'].name}:{quote(agent['token'], safe='')}@127.0.0.1:{agent['port']}/clinic"
    )
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        foreign_keys = inspector.get_foreign_keys("encounters")
        assert [
            (fk["name"], fk["constrained_columns"], fk["referred_table"], fk["referred_columns"]) for fk in foreign_keys
        ] == [("encounters_patient_id_fkey", ["patient_id"], "patients", ["id"])]
        columns = {column["name"]: column for column in inspector.get_columns("patients")}
        assert list(columns) == [
            "id",
            "mrn",
            "full_name",
            "date_of_birth",
            "ssn",
            "phone",
            "email",
            "address",
            "zip",
        ]
        assert str(columns["id"]["type"]) == "BIGINT" and columns["id"]["nullable"] is False
        assert str(columns["date_of_birth"]["type"]) == "DATE"
        assert columns["phone"]["nullable"] is True
        primary_key = inspector.get_pk_constraint("patients")
        assert (primary_key["name"], primary_key["constrained_columns"]) == ("patients_pkey", ["id"])
        assert set(inspector.get_table_names()) >= {"patients", "encounters", "prescriptions", "diagnosis_codes"}
        metadata = MetaData()
        roles = Table("pg_roles", metadata, schema="pg_catalog", autoload_with=engine)
        columns_view = Table("columns", metadata, schema="information_schema", autoload_with=engine)
        with engine.connect() as conn:
            reader = conn.execute(
                select(roles.c.rolname, roles.c.rolcanlogin).where(roles.c.rolname == environment.READ_ROLE)
            ).one()
            assert tuple(reader) == (environment.READ_ROLE, True)
            patient_columns = conn.execute(
                select(columns_view.c.column_name, columns_view.c.data_type)
                .where(columns_view.c.table_schema == "public", columns_view.c.table_name == "patients")
                .order_by(columns_view.c.ordinal_position)
            ).all()
            assert [tuple(row) for row in patient_columns][:4] == [
                ("id", "bigint"),
                ("mrn", "text"),
                ("full_name", "text"),
                ("date_of_birth", "date"),
            ]
            ssn, full_name = conn.execute(text("SELECT ssn, full_name FROM patients WHERE id = 1")).one()
        assert_masked_patient(services, ssn, full_name)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------------------------
# JDBC (pgJDBC from Debian)
# --------------------------------------------------------------------------------------------------------------

_JDBC_PROBE = textwrap.dedent(
    """
    import java.sql.*;

    /** Prints what pgJDBC's DatabaseMetaData reports, one tab-separated line per row, then one masked read. */
    public class CatalogProbe {
        static void print(String tag, ResultSet rows, String... columns) throws SQLException {
            try (rows) {
                while (rows.next()) {
                    StringBuilder line = new StringBuilder(tag);
                    for (String column : columns) {
                        line.append('\\t').append(rows.getString(column));
                    }
                    System.out.println(line);
                }
            }
        }

        public static void main(String[] args) throws Exception {
            try (Connection conn = DriverManager.getConnection(args[0], args[1], args[2])) {
                DatabaseMetaData meta = conn.getMetaData();
                print("FK", meta.getImportedKeys(null, "public", "encounters"),
                      "PKTABLE_NAME", "PKCOLUMN_NAME", "FKTABLE_NAME", "FKCOLUMN_NAME", "FK_NAME");
                print("COL", meta.getColumns(null, "public", "patients", "%"),
                      "COLUMN_NAME", "TYPE_NAME", "IS_NULLABLE", "ORDINAL_POSITION");
                print("PK", meta.getPrimaryKeys(null, "public", "patients"), "COLUMN_NAME", "KEY_SEQ");
                try (Statement statement = conn.createStatement()) {
                    print("PHI", statement.executeQuery("SELECT ssn, full_name FROM patients WHERE id = 1"),
                          "ssn", "full_name");
                }
            }
        }
    }
    """
)


@pytest.fixture(scope="module")
def jdbc_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probe compiled against Debian's pgJDBC (packages libpostgresql-jdbc-java, default-jdk-headless)."""
    assert PGJDBC_JAR.exists() and shutil.which("javac"), (
        "pgJDBC tests need the Debian packages libpostgresql-jdbc-java and default-jdk-headless"
    )
    folder = tmp_path_factory.mktemp("jdbc")
    (folder / "CatalogProbe.java").write_text(_JDBC_PROBE)
    subprocess.run(
        ["javac", "-J-XX:-UsePerfData", "-cp", str(PGJDBC_JAR), "CatalogProbe.java"],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return folder


def test_jdbc_database_metadata_reports_keys_and_columns(
    services: Any, agent: dict[str, Any], jdbc_probe: Path
) -> None:
    url = f"jdbc:postgresql://127.0.0.1:{agent['port']}/clinic?sslmode=disable"
    run = subprocess.run(
        [
            "java",
            "-XX:-UsePerfData",
            "-cp",
            f"{PGJDBC_JAR}:{jdbc_probe}",
            "CatalogProbe",
            url,
            agent["agent"].name,
            agent["token"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = [line.split("\t") for line in run.stdout.splitlines()]
    assert REDACTED not in run.stdout.replace("PHI", "")  # PHI lines are checked below
    assert [line[1:] for line in lines if line[0] == "FK"] == [
        ["patients", "id", "encounters", "patient_id", "encounters_patient_id_fkey"]
    ]
    # getPrimaryKeys calls initdb's information_schema._pg_expandarray(): trusted like a pg_catalog built-in.
    assert [line[1:] for line in lines if line[0] == "PK"] == [["id", "1"]]
    columns = [line[1:] for line in lines if line[0] == "COL"]
    assert [column[0] for column in columns] == [
        "id",
        "mrn",
        "full_name",
        "date_of_birth",
        "ssn",
        "phone",
        "email",
        "address",
        "zip",
    ]
    assert columns[0] == ["id", "int8", "NO", "1"] and columns[3] == ["date_of_birth", "date", "NO", "4"]
    [phi] = [line[1:] for line in lines if line[0] == "PHI"]
    assert_masked_patient(services, phi[0], phi[1])


# --------------------------------------------------------------------------------------------------------------
# pgcli (its completion refresh, through its own executor)
# --------------------------------------------------------------------------------------------------------------


def test_pgcli_completion_metadata_and_special_commands_are_real(services: Any, agent: dict[str, Any]) -> None:
    """Completion metadata comes from pg_catalog's base tables; ``\\du`` (pgspecial) reads pg_catalog.pg_roles."""
    from pgcli.pgexecute import PGExecute
    from pgspecial.main import PGSpecial

    executor = PGExecute(dsn=agent["dsn"])
    try:
        # What pgcli's completion refresher asks for (pgcli.completion_refresher), in its order.
        assert "public" in executor.search_path()
        assert {"public", "pg_catalog", "information_schema"} <= set(executor.schemata())
        tables = set(executor.tables())
        assert {("public", "patients"), ("public", "encounters")} <= tables
        columns = {
            (schema, table, column): type_name for schema, table, column, type_name, *_ in executor.table_columns()
        }
        assert columns[("public", "patients", "ssn")] == "text"
        assert columns[("public", "encounters", "admitted_at")] == "timestamp with time zone"
        assert ("pg_catalog", "pg_roles") in set(executor.views())
        view_columns = {(schema, table, column) for schema, table, column, *_ in executor.view_columns()}
        assert ("pg_catalog", "pg_roles", "rolname") in view_columns
        foreign_keys = {tuple(fk) for fk in executor.foreignkeys()}
        assert ("public", "patients", "id", "public", "encounters", "patient_id") in foreign_keys
        functions = {(f.schema_name, f.func_name) for f in executor.functions()}
        assert ("pg_catalog", "upper") in functions
        assert "clinic" in executor.databases() or environment.TARGET_DB in executor.databases()
        assert REDACTED not in flat((tables, columns, view_columns, foreign_keys, functions))
        [(_, role_rows, headers, _, _, _, _)] = list(executor.run("\\du", pgspecial=PGSpecial()))
        roles = list(role_rows)
        by_name = {row[0]: row for row in roles}
        assert headers[0] == "rolname" and environment.READ_ROLE in by_name
        assert REDACTED not in flat(roles)
        assert by_name[environment.READ_ROLE][1:6] == (False, True, False, False, True)  # rolsuper ... rolcanlogin
        assert any(row[1] is True for row in roles)  # the bootstrap superuser
        [(_, rows, _, _, _, _, _)] = list(executor.run("SELECT ssn, full_name FROM patients WHERE id = 1"))
        [(ssn, full_name)] = list(rows)
        assert_masked_patient(services, ssn, full_name)
    finally:
        executor.conn.close()


# --------------------------------------------------------------------------------------------------------------
# postgres-mcp
# --------------------------------------------------------------------------------------------------------------
# postgres-mcp needs Python >= 3.12 (this project runs 3.11), so it cannot run in-process here. These are the
# statements its list_schemas, list_objects and get_object_details tools send (postgres-mcp 0.3.0, server.py), sent
# the way its restricted-mode driver sends them: a psycopg async connection, BEGIN TRANSACTION READ ONLY, the
# statement behind a "/* crystaldba */" comment with parameters inlined as literals (SafeSqlDriver), dict rows,
# ROLLBACK.

_MCP_LIST_SCHEMAS = """
            SELECT
                schema_name,
                schema_owner,
                CASE
                    WHEN schema_name LIKE 'pg_%' THEN 'System Schema'
                    WHEN schema_name = 'information_schema' THEN 'System Information Schema'
                    ELSE 'User Schema'
                END as schema_type
            FROM information_schema.schemata
            ORDER BY schema_type, schema_name
            """
_MCP_LIST_TABLES = """
                SELECT table_schema, table_name, table_type
                FROM information_schema.tables
                WHERE table_schema = {} AND table_type = {}
                ORDER BY table_name
                """
_MCP_LIST_EXTENSIONS = """
                SELECT extname, extversion, extrelocatable
                FROM pg_extension
                ORDER BY extname
                """
_MCP_COLUMNS = """
                SELECT column_name, data_type, is_nullable, column_default
                FROM information_schema.columns
                WHERE table_schema = {} AND table_name = {}
                ORDER BY ordinal_position
                """
_MCP_CONSTRAINTS = """
                SELECT tc.constraint_name, tc.constraint_type, kcu.column_name
                FROM information_schema.table_constraints AS tc
                LEFT JOIN information_schema.key_column_usage AS kcu
                  ON tc.constraint_name = kcu.constraint_name
                 AND tc.table_schema = kcu.table_schema
                WHERE tc.table_schema = {} AND tc.table_name = {}
                """
_MCP_INDEXES = """
                SELECT indexname, indexdef
                FROM pg_indexes
                WHERE schemaname = {} AND tablename = {}
                """


def _mcp_restricted_query(dsn: str, template: str, params: list[str]) -> list[dict[str, Any]]:
    statement = sql.SQL(template).format(*(sql.Literal(p) for p in params)).as_string() if params else template

    async def run() -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute("BEGIN TRANSACTION READ ONLY")
            await cursor.execute(f"/* crystaldba */ {statement}")
            rows = await cursor.fetchall()
            await cursor.execute("ROLLBACK")
            return rows

    return asyncio.run(run())


def test_postgres_mcp_listing_statements_return_real_metadata(
    services: Any, agent: dict[str, Any], constrained_tables: None
) -> None:
    dsn = agent["dsn"]
    schemas = _mcp_restricted_query(dsn, _MCP_LIST_SCHEMAS, [])
    assert {"schema_name": "public", "schema_owner": "pg_database_owner", "schema_type": "User Schema"} in schemas

    tables = _mcp_restricted_query(dsn, _MCP_LIST_TABLES, ["public", "BASE TABLE"])
    names = [row["table_name"] for row in tables]
    assert {"patients", "encounters", "prescriptions", "diagnosis_codes"} <= set(names)
    assert all(row["table_schema"] == "public" and row["table_type"] == "BASE TABLE" for row in tables)

    extensions = _mcp_restricted_query(dsn, _MCP_LIST_EXTENSIONS, [])
    assert {"extname": "plpgsql", "extversion": "1.0", "extrelocatable": False} in extensions

    columns = _mcp_restricted_query(dsn, _MCP_COLUMNS, ["public", "encounters"])
    assert [(c["column_name"], c["data_type"], c["is_nullable"]) for c in columns] == [
        ("id", "bigint", "NO"),
        ("patient_id", "bigint", "YES"),
        ("admitted_at", "timestamp with time zone", "NO"),
        ("diagnosis_code", "text", "NO"),
        ("notes", "text", "YES"),
    ]
    constraints = _mcp_restricted_query(dsn, _MCP_CONSTRAINTS, ["public", "catalog_probe_bed"])
    keyed = {(c["constraint_name"], c["constraint_type"], c["column_name"]) for c in constraints}
    assert {
        ("catalog_probe_bed_pkey", "PRIMARY KEY", "id"),
        ("catalog_probe_bed_ward_id_fkey", "FOREIGN KEY", "ward_id"),
    } <= keyed
    indexes = _mcp_restricted_query(dsn, _MCP_INDEXES, ["public", "encounters"])
    assert {
        "indexname": "encounters_patient_id_idx",
        "indexdef": "CREATE INDEX encounters_patient_id_idx ON public.encounters USING btree (patient_id)",
    } in indexes
    assert REDACTED not in flat((schemas, tables, extensions, columns, constraints, indexes))

    [patient] = _mcp_restricted_query(dsn, "SELECT ssn, full_name FROM patients WHERE id = {}", ["1"])
    assert_masked_patient(services, patient["ssn"], patient["full_name"])


# --------------------------------------------------------------------------------------------------------------
# HTTP API
# --------------------------------------------------------------------------------------------------------------


def api_result(client: Any, query: str) -> dict[str, Any]:
    response = client.post("/api/v1/queries", {"datasource": "clinic", "sql": query}, format="json")
    assert response.status_code == 200, response.json()
    body: dict[str, Any] = response.json()
    assert body["status"] == "executed", body
    return body


def as_lists(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(row) for row in rows]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name IN ('patients', 'encounters') "
        "ORDER BY table_name, ordinal_position",
        "SELECT constraint_name, table_name, constraint_type, is_deferrable FROM information_schema.table_constraints "
        "WHERE table_schema = 'public' AND table_name LIKE 'catalog_probe_%' ORDER BY constraint_name",
        "SELECT constraint_name, table_name, column_name, ordinal_position FROM information_schema.key_column_usage "
        "WHERE table_schema = 'public' ORDER BY constraint_name, ordinal_position",
        "SELECT constraint_name, unique_constraint_name, update_rule, delete_rule "
        "FROM information_schema.referential_constraints WHERE constraint_schema = 'public' ORDER BY constraint_name",
        "SELECT rolname, rolsuper, rolcanlogin, rolcreaterole FROM pg_roles "
        f"WHERE rolname IN ('{environment.READ_ROLE}', '{environment.WRITE_ROLE}') ORDER BY rolname",
        "SELECT name, setting, unit, context FROM pg_settings "
        "WHERE name IN ('max_connections', 'block_size', 'server_version_num') ORDER BY name",
    ],
    ids=["columns", "table_constraints", "key_column_usage", "referential_constraints", "pg_roles", "pg_settings"],
)
def test_catalog_views_over_http_return_real_values(services: Any, constrained_tables: None, query: str) -> None:
    _, client = agent_client(make_user(Role.ENGINEER))
    body = api_result(client, query)
    truth = as_lists(as_reader(services, query))
    assert truth, "PostgreSQL shows the read role rows here"
    # The API gives unmasked values JSON types (policy.result_values): integers and booleans as psycopg loads them.
    with psycopg.connect(services.target.read_url) as conn:
        typed_truth = as_lists(conn.execute(query).fetchall())
    assert body["rows"] == typed_truth
    assert REDACTED not in flat(body["rows"])


def test_one_statement_joining_catalog_and_phi_masks_only_the_phi(services: Any) -> None:
    _, client = agent_client(make_user(Role.ENGINEER))
    rows = api_result(
        client,
        "SELECT c.table_name, c.data_type, p.ssn, p.full_name FROM information_schema.columns c "
        "CROSS JOIN patients p WHERE p.id = 1 AND c.table_schema = 'public' AND c.table_name = 'patients' "
        "AND c.column_name = 'ssn'",
    )["rows"]
    [[table_name, data_type, ssn, full_name]] = rows
    assert (table_name, data_type) == ("patients", "text")
    assert_masked_patient(services, ssn, full_name)


def test_catalog_rows_fetched_from_cursors_are_real(services: Any, agent: dict[str, Any]) -> None:
    """FETCH results are masked by the columns' reported origins (no lineage of their own): a catalog view's
    columns count as metadata there too, while a PHI column fetched the same way keeps its mask."""
    reader = environment.READ_ROLE
    with psycopg.connect(agent["dsn"]) as conn:
        with conn.transaction():
            conn.execute(
                f"DECLARE roles CURSOR FOR SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = '{reader}'"
            )
            assert conn.execute("FETCH ALL FROM roles").fetchall() == [(reader, True)]
        with conn.transaction(), conn.cursor(name="patient_columns") as cursor:  # psycopg's server-side cursor
            cursor.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = 'patients' ORDER BY ordinal_position"
            )
            assert cursor.fetchmany(2) == [("id", "bigint"), ("mrn", "text")]
        with conn.transaction(), conn.cursor(name="patient") as cursor:
            cursor.execute("SELECT ssn, full_name FROM patients WHERE id = 1")
            [(ssn, full_name)] = cursor.fetchall()
    assert_masked_patient(services, ssn, full_name)


# --------------------------------------------------------------------------------------------------------------
# Only relations that really are PostgreSQL's catalogs get this treatment
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def catalog_impostors(services: Any) -> Iterator[None]:
    """PHI behind catalog names: a view in another schema, put ahead of pg_catalog by a search_path the DBA set for
    the read role (agents cannot SET it; the gateway's snapshot does not know it), and a quoted upper-case twin.
    Catalog names no other test reads, so a stale snapshot elsewhere is harmless."""
    reader = environment.READ_ROLE
    with psycopg.connect(services.target.owner_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA impostor")
        conn.execute(
            "CREATE VIEW impostor.pg_timezone_names AS "
            "SELECT full_name AS name, ssn AS abbrev, NULL::interval AS utc_offset, false AS is_dst FROM patients"
        )
        conn.execute('CREATE VIEW public."PG_TIMEZONE_ABBREVS" AS SELECT id, ssn AS abbrev FROM patients')
        conn.execute(f'GRANT USAGE ON SCHEMA impostor TO "{reader}"')
        conn.execute(f'GRANT SELECT ON impostor.pg_timezone_names, public."PG_TIMEZONE_ABBREVS" TO "{reader}"')
        conn.execute(f'ALTER ROLE "{reader}" SET search_path = impostor, pg_catalog, public')
    time.sleep(1.5)  # past the test gateway's catalog TTL (CATALOG_TTL_SECONDS=1), so its snapshot has them
    try:
        yield
    finally:
        with psycopg.connect(services.target.owner_url, autocommit=True) as conn:
            conn.execute(f'ALTER ROLE "{reader}" RESET search_path')
            conn.execute("DROP SCHEMA impostor CASCADE")
            conn.execute('DROP VIEW public."PG_TIMEZONE_ABBREVS"')


def test_a_view_shadowing_a_catalog_name_on_the_search_path_is_not_trusted(
    services: Any, agent: dict[str, Any], catalog_impostors: None
) -> None:
    real_ssn, real_name = real_patient(services)
    with psycopg.connect(agent["dsn"], autocommit=True) as conn:  # a new upstream session: the role's search_path
        try:
            shadowed = conn.execute("SELECT name, abbrev FROM pg_timezone_names").fetchall()
        except psycopg.Error as refused:
            assert refused.sqlstate == "HA001"  # held for review: nothing was read
        else:
            assert shadowed, "PostgreSQL read the view over patients"
            assert real_ssn not in flat(shadowed) and real_name not in flat(shadowed)
            assert all(row == (REDACTED, REDACTED) for row in shadowed)
        # Written with its schema, the real catalog view is still trusted.
        [(zone,)] = conn.execute("SELECT name FROM pg_catalog.pg_timezone_names WHERE name = 'UTC'").fetchall()
        assert zone == "UTC"


def test_a_quoted_upper_case_twin_of_a_catalog_name_is_not_taken_for_the_catalog(
    services: Any, agent: dict[str, Any], catalog_impostors: None
) -> None:
    real_ssn, _ = real_patient(services)
    with psycopg.connect(agent["dsn"], autocommit=True) as conn:
        try:
            twin = conn.execute('SELECT abbrev FROM "PG_TIMEZONE_ABBREVS" WHERE id = 1').fetchall()
        except psycopg.Error as refused:
            assert refused.sqlstate == "HA001"  # held for review: nothing was read
        else:
            assert twin == [(REDACTED,)] and real_ssn not in flat(twin)
        assert conn.execute("SELECT abbrev FROM pg_timezone_abbrevs WHERE abbrev = 'UTC'").fetchall() == [("UTC",)]


# --------------------------------------------------------------------------------------------------------------
# The snapshot knows unqualified catalog names
# --------------------------------------------------------------------------------------------------------------


def test_an_unqualified_catalog_name_does_not_force_a_catalog_reload(services: Any) -> None:
    """pg_catalog is always searched, so ``pg_roles`` written bare is a known relation: the gateway must not reload
    its snapshot for every statement that names one (it reloads when a statement names a relation it lacks)."""
    cache = CatalogCache(Access.READ, ttl_seconds=60)
    first = cache.get(environment.DATASOURCE, services.target.read_url)
    time.sleep(REFRESH_FLOOR_SECONDS * 1.5)
    again = cache.get(environment.DATASOURCE, services.target.read_url, must_know=("pg_roles", "pg_settings"))
    assert again is first
    oid = first.relation_oid("pg_roles")
    assert oid is not None and oid > 0 and first.is_system_relation(oid)
