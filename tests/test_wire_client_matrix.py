"""Real clients driven through the wire gateway the way their users drive them, compared with PostgreSQL itself.

Every scenario runs the same client code twice where it can: through the gateway as an agent, and straight at the
target as the gateway's own read-only role (``services.target.read_url``: the same privileges, no gateway). A user
expects the two to agree on everything that is not PHI; PHI columns must come back masked, never raw. Clients:
pgJDBC with HikariCP, node-postgres (with pg-cursor), pg_dump, asyncpg, psycopg 3, SQLAlchemy 2, Django and psql.

Every test is bounded in time (pytest-timeout, and a timeout on every subprocess and connection), so a gateway
that hangs a client fails the test instead of sticking. Java and npm artefacts live in pytest's tmp dirs.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import asyncpg
import psycopg
import pytest

from approvals.models import Ticket
from identity.roles import Role
from tests import environment
from tests.factories import make_agent, make_user, mark_classified

pytestmark = pytest.mark.timeout(240)

PGJDBC_JAR = Path("/usr/share/java/postgresql.jar")  # Debian: libpostgresql-jdbc-java
HIKARI_JAR = Path("/usr/share/java/HikariCP.jar")  # Debian: libhikaricp-java
SLF4J_JARS = (Path("/usr/share/java/slf4j-api.jar"), Path("/usr/share/java/slf4j-nop.jar"))  # libslf4j-java
REPO = Path(__file__).resolve().parent.parent
CONNECT_TIMEOUT = 10
CLIENT_TIMEOUT = 120  # seconds for any one client subprocess


# --------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def agent(services: Any) -> dict[str, Any]:
    owner = make_user(Role.ENGINEER)
    agent, token = make_agent(owner)
    port = services.gateway_port
    return {
        "agent": agent,
        "name": agent.name,
        "token": token,
        "port": port,
        "dsn": f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{port}/clinic",
    }


def direct_dsn(services: Any) -> str:
    """The target as the gateway's read-only role: what PostgreSQL itself answers the gateway."""
    return str(services.target.read_url)


def url_parts(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "dbname": parts.path.lstrip("/"),
    }


def owner_rows(services: Any, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(services.target.owner_url, connect_timeout=CONNECT_TIMEOUT) as conn:
        return conn.execute(query, params or None).fetchall()


def real_patients(services: Any, upto: int = 8) -> dict[int, tuple[str, str, datetime.date]]:
    """id -> (ssn, full_name, date_of_birth), read as the owner (never through the gateway)."""
    rows = owner_rows(services, "SELECT id, ssn, full_name, date_of_birth FROM patients WHERE id <= %s", upto)
    return {int(r[0]): (str(r[1]), str(r[2]), r[3]) for r in rows}


def assert_masked(services: Any, patient_id: int, ssn: Any, full_name: Any = None) -> None:
    real_ssn, real_name, _ = real_patients(services, patient_id)[patient_id]
    assert str(ssn) == "***" + real_ssn[-4:], f"ssn not masked as expected: {ssn!r}"
    assert real_ssn not in str(ssn)
    if full_name is not None:
        assert str(full_name) != real_name and real_name not in str(full_name)


def no_raw_phi(services: Any, text: str) -> None:
    """None of the first patients' raw SSNs or names appears anywhere in a client's output."""
    for ssn, name, _ in real_patients(services).values():
        assert ssn not in text and name not in text


def run(args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run(
        args, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=CLIENT_TIMEOUT
    )


def tickets_of(agent: dict[str, Any]) -> int:
    return Ticket.objects.filter(agent=agent["agent"]).count()


@pytest.fixture(scope="module")
def matrix_types(services: Any) -> Iterator[str]:
    """A non-PHI table of awkward types (arrays, an enum, a composite, ranges, dates, numerics), readable by the
    read role and classified (agents may read it). Dropped afterwards."""
    reader = environment.READ_ROLE
    with psycopg.connect(services.target.owner_url, autocommit=True) as conn:
        conn.execute("CREATE TYPE matrix_mood AS ENUM ('sad', 'ok', 'happy')")
        conn.execute("CREATE TYPE matrix_point AS (x int, y int)")
        conn.execute(
            "CREATE TABLE matrix_types (id int PRIMARY KEY, tags text[] NOT NULL, scores int[] NOT NULL, "
            "mood matrix_mood NOT NULL, spot matrix_point, span int4range, born date NOT NULL, "
            "seen_at timestamptz NOT NULL, amount numeric(10, 2) NOT NULL)"
        )
        conn.execute(
            "INSERT INTO matrix_types SELECT g, ARRAY['t' || g, 'u'], ARRAY[g, g * 2], "
            "(ARRAY['sad', 'ok', 'happy']::matrix_mood[])[1 + g % 3], ROW(g, -g)::matrix_point, "
            "int4range(g, g + 10), date '2020-01-01' + g, timestamptz '2024-03-01 12:00:00+00' + g * interval '1 h', "
            "g * 1.25 FROM generate_series(1, 40) g"
        )
        conn.execute(f'GRANT SELECT ON matrix_types TO "{reader}"')
    mark_classified("matrix_types")
    time.sleep(1.5)  # past the test gateway's catalog TTL (CATALOG_TTL_SECONDS=1)
    yield "matrix_types"
    with psycopg.connect(services.target.owner_url, autocommit=True) as conn:
        conn.execute("DROP TABLE matrix_types")
        conn.execute("DROP TYPE matrix_point, matrix_mood")


# --------------------------------------------------------------------------------------------------------------
# JDBC: pgJDBC behind a HikariCP pool
# --------------------------------------------------------------------------------------------------------------

_POOL_PROBE = textwrap.dedent(
    """
    import com.zaxxer.hikari.HikariConfig;
    import com.zaxxer.hikari.HikariDataSource;
    import java.sql.*;

    /** args: jdbcUrl user password scenario [testQuery]. One tab-separated line per observation. */
    public class PoolProbe {
        static void out(Object... parts) {
            StringBuilder line = new StringBuilder();
            for (int i = 0; i < parts.length; i++) {
                if (i > 0) line.append('\\t');
                line.append(parts[i]);
            }
            System.out.println(line);
        }

        static void rows(String tag, ResultSet r) throws SQLException {
            ResultSetMetaData meta = r.getMetaData();
            while (r.next()) {
                Object[] parts = new Object[meta.getColumnCount() + 1];
                parts[0] = tag;
                for (int i = 1; i <= meta.getColumnCount(); i++) {
                    Object value = r.getObject(i);
                    parts[i] = value == null ? "NULL" : value.getClass().getSimpleName() + ":" + value;
                }
                out(parts);
            }
        }

        static void meta(String tag, ResultSetMetaData meta) throws SQLException {
            for (int i = 1; i <= meta.getColumnCount(); i++) {
                out(tag, meta.getColumnName(i), meta.getColumnTypeName(i), meta.getColumnType(i),
                    meta.getColumnClassName(i), meta.getTableName(i), meta.isNullable(i));
            }
        }

        public static void main(String[] args) throws Exception {
            HikariConfig config = new HikariConfig();
            config.setJdbcUrl(args[0]);
            config.setUsername(args[1]);
            config.setPassword(args[2]);
            config.setMaximumPoolSize(2);
            config.setMinimumIdle(1);
            config.setConnectionTimeout(15000);
            config.setValidationTimeout(5000);
            config.setInitializationFailTimeout(15000);
            if (args.length > 4) config.setConnectionTestQuery(args[4]);
            String scenario = args[3];
            try (HikariDataSource pool = new HikariDataSource(config)) {
                if (scenario.equals("pool")) {
                    try (Connection c = pool.getConnection();
                         PreparedStatement empty = c.prepareStatement("")) {
                        empty.executeUpdate();  // what pgJDBC's isValid() sends
                        out("EMPTY", "ok");
                    } catch (SQLException e) {
                        out("EMPTY", e.getSQLState(), e.getMessage().replace('\\n', ' '));
                    }
                    for (int i = 0; i < 12; i++) {
                        try (Connection c = pool.getConnection()) {
                            out("VALID", c.isValid(5));
                            try (Statement s = c.createStatement();
                                 ResultSet r = s.executeQuery(
                                     "SELECT current_schema(), current_setting('application_name')")) {
                                r.next();
                                out("SESSION", r.getString(1), r.getString(2));
                            }
                        }
                    }
                    try (Connection c = pool.getConnection()) {
                        c.setAutoCommit(false);
                        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(
                                "SELECT count(*) FROM scratch")) {
                            rows("TX", r);
                        }
                        c.commit();
                    }
                    out("DONE");
                } else if (scenario.equals("session")) {
                    try (Connection c = pool.getConnection(); Statement s = c.createStatement();
                         ResultSet r = s.executeQuery("SELECT current_schema(), current_setting('search_path'), "
                             + "current_setting('application_name')")) {
                        r.next();
                        out("SESSION", r.getString(1), r.getString(2), r.getString(3));
                    }
                    out("DONE");
                } else if (scenario.equals("prepared")) {
                    try (Connection c = pool.getConnection();
                         PreparedStatement p = c.prepareStatement("SELECT id, label FROM scratch WHERE id = ?")) {
                        for (int i = 1; i <= 8; i++) {
                            p.setInt(1, i);
                            try (ResultSet r = p.executeQuery()) {
                                rows("PREP", r);
                            }
                        }
                        meta("META", p.getMetaData());
                    }
                    out("DONE");
                } else if (scenario.equals("phi")) {
                    try (Connection c = pool.getConnection();
                         PreparedStatement p = c.prepareStatement(
                             "SELECT id, ssn, full_name, date_of_birth FROM patients WHERE id = ?")) {
                        for (int i = 1; i <= 8; i++) {
                            p.setLong(1, i);
                            try (ResultSet r = p.executeQuery()) {
                                rows("PHI", r);
                                meta("PHIMETA" + i, r.getMetaData());
                            }
                        }
                    }
                    out("DONE");
                } else if (scenario.equals("types")) {
                    try (Connection c = pool.getConnection();
                         PreparedStatement p = c.prepareStatement(
                             "SELECT id, born, seen_at, amount, scores, mood::text FROM matrix_types "
                             + "WHERE id <= ? ORDER BY id")) {
                        for (int i = 1; i <= 7; i++) {
                            p.setInt(1, i);
                            try (ResultSet r = p.executeQuery()) {
                                rows("TYPES" + i, r);
                                meta("TMETA" + i, r.getMetaData());
                            }
                        }
                    }
                    out("DONE");
                }
            }
        }
    }
    """
)


@pytest.fixture(scope="module")
def pool_probe(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The probe compiled against Debian's pgJDBC and HikariCP; returns its class path."""
    jars = (PGJDBC_JAR, HIKARI_JAR, *SLF4J_JARS)
    missing = [str(jar) for jar in jars if not jar.exists()]
    assert not missing and shutil.which("javac"), (
        f"missing {missing}: install libpostgresql-jdbc-java libhikaricp-java libslf4j-java default-jdk-headless "
        "(make system-packages)"
    )
    folder = tmp_path_factory.mktemp("hikari")
    (folder / "PoolProbe.java").write_text(_POOL_PROBE)
    classpath = ":".join(str(jar) for jar in jars)
    compiled = run(["javac", "-J-XX:-UsePerfData", "-cp", classpath, "PoolProbe.java"], cwd=folder)
    assert compiled.returncode == 0, compiled.stderr
    return f"{classpath}:{folder}"


def _java(pool_probe: str, url: str, user: str, password: str, scenario: str, *extra: str) -> list[list[str]]:
    done = run(["java", "-XX:-UsePerfData", "-cp", pool_probe, "PoolProbe", url, user, password, scenario, *extra])
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert lines and lines[-1] == ["DONE"], done.stdout
    return lines


def jdbc_both(
    services: Any, agent: dict[str, Any], pool_probe: str, scenario: str, *extra: str
) -> tuple[list[list[str]], list[list[str]]]:
    query = "?sslmode=disable&currentSchema=public&ApplicationName=matrix-jdbc&connectTimeout=10&socketTimeout=60"
    gateway = _java(
        pool_probe,
        f"jdbc:postgresql://127.0.0.1:{agent['port']}/clinic{query}",
        agent["name"],
        agent["token"],
        scenario,
        *extra,
    )
    d = url_parts(direct_dsn(services))
    direct = _java(
        pool_probe,
        f"jdbc:postgresql://{d['host']}:{d['port']}/{d['dbname']}{query}",
        d["user"],
        d["password"],
        scenario,
        *extra,
    )
    # Upstream, the gateway keeps the agent's name in front of the application name (PostgreSQL's logs and
    # pg_stat_activity name the agent), so SQL that reads the setting back sees it there: required, then removed.
    prefix = f"phigate-wire/{agent['name']}/"
    for line in gateway:
        if line[0] == "SESSION":
            assert line[-1].startswith(prefix), line
            line[-1] = line[-1].removeprefix(prefix)
    return gateway, direct


def test_jdbc_hikari_pool_validates_and_keeps_session_settings(
    services: Any, agent: dict[str, Any], pool_probe: str
) -> None:
    """isValid() on every checkout, currentSchema and ApplicationName from the URL, a transaction."""
    before = tickets_of(agent)
    gateway, direct = jdbc_both(services, agent, pool_probe, "pool")
    assert ["EMPTY", "ok"] in direct
    assert [line for line in gateway if line[0] == "EMPTY"] == [["EMPTY", "ok"]]  # isValid() runs an empty query
    assert {tuple(line) for line in gateway if line[0] == "VALID"} == {("VALID", "true")}
    assert {tuple(line) for line in gateway if line[0] == "SESSION"} == {("SESSION", "public", "matrix-jdbc")}
    assert gateway == direct
    assert tickets_of(agent) == before


def test_jdbc_url_session_settings_reach_the_session(services: Any, agent: dict[str, Any], pool_probe: str) -> None:
    """``currentSchema=public`` (pgJDBC's ``search_path`` start-up parameter) and ``ApplicationName``."""
    gateway, direct = jdbc_both(services, agent, pool_probe, "session")
    assert direct == [["SESSION", "public", "public", "matrix-jdbc"], ["DONE"]]
    assert gateway == direct


def test_jdbc_hikari_pool_with_connection_test_query(services: Any, agent: dict[str, Any], pool_probe: str) -> None:
    before = tickets_of(agent)
    gateway, direct = jdbc_both(services, agent, pool_probe, "pool", "SELECT 1")
    assert {tuple(line) for line in gateway if line[0] == "VALID"} == {("VALID", "true")}
    assert gateway == direct
    assert tickets_of(agent) == before


def test_jdbc_server_side_prepared_statement_past_prepare_threshold(
    services: Any, agent: dict[str, Any], pool_probe: str
) -> None:
    """prepareThreshold is 5: executions 5 to 8 use a named server-side statement (and binary transfer)."""
    gateway, direct = jdbc_both(services, agent, pool_probe, "prepared")
    assert gateway == direct
    assert len([line for line in gateway if line[0] == "PREP"]) == 8


def test_jdbc_prepared_phi_read_is_masked_in_every_execution(
    services: Any, agent: dict[str, Any], pool_probe: str
) -> None:
    gateway, direct = jdbc_both(services, agent, pool_probe, "phi")
    phi = [line for line in gateway if line[0] == "PHI"]
    assert len(phi) == 8
    no_raw_phi(services, "\n".join("\t".join(line) for line in gateway))
    for line in phi:
        patient_id = int(line[1].split(":", 1)[1])
        assert line[1] == f"Long:{patient_id}"
        assert_masked(services, patient_id, line[2].split(":", 1)[1], line[3].split(":", 1)[1])
    # The non-PHI column keeps its type in every execution, before and after the server-side prepare.
    id_meta = {tuple(line[1:5]) for line in gateway if line[0].startswith("PHIMETA") and line[1] == "id"}
    direct_id_meta = {tuple(line[1:5]) for line in direct if line[0].startswith("PHIMETA") and line[1] == "id"}
    assert id_meta == direct_id_meta == {("id", "int8", "-5", "java.lang.Long")}


def test_jdbc_types_and_result_metadata_match_postgresql(
    services: Any, agent: dict[str, Any], pool_probe: str, matrix_types: str
) -> None:
    gateway, direct = jdbc_both(services, agent, pool_probe, "types")
    assert gateway == direct


# --------------------------------------------------------------------------------------------------------------
# node-postgres (pg, pg-cursor)
# --------------------------------------------------------------------------------------------------------------

_NODE_PROBE = textwrap.dedent(
    """
    const { Client } = require('pg');
    const Cursor = require('pg-cursor');

    const [dsn, scenario] = process.argv.slice(2);

    function typed(rows) {
      return rows.map((row) => Object.fromEntries(Object.entries(row).map(([k, v]) => [
        k, [v === null ? 'null' : (v instanceof Date ? 'Date' : (Array.isArray(v) ? 'array' : typeof v)),
            v instanceof Date ? v.toISOString() : v],
      ])));
    }

    async function main() {
      const client = new Client({ connectionString: dsn, connectionTimeoutMillis: 10000, query_timeout: 60000 });
      await client.connect();
      const out = {};
      try {
        if (scenario === 'simple') {
          const r = await client.query('SELECT id, label FROM scratch WHERE id <= 3 ORDER BY id');
          out.rows = typed(r.rows);
          out.fields = r.fields.map((f) => [f.name, f.dataTypeID]);
        } else if (scenario === 'multi') {
          const multi = await client.query('SELECT 1 AS one; SELECT id FROM scratch WHERE id = 2');
          out.multi = multi.map((m) => m.rows);
        } else if (scenario === 'params') {
          out.param = typed((await client.query('SELECT id, label FROM scratch WHERE id = $1', [2])).rows);
          out.named = [];
          for (let i = 1; i <= 7; i++) {
            const r = await client.query({
              name: 'by_id', text: 'SELECT id, label FROM scratch WHERE id = $1', values: [i],
            });
            out.named.push(typed(r.rows));
          }
          out.array = (await client.query({
            text: 'SELECT id, label FROM scratch WHERE id = $1', values: [3], rowMode: 'array',
          })).rows;
        } else if (scenario === 'types') {
          const r = await client.query(
            'SELECT id, tags, scores, mood, spot, span, born, seen_at, amount FROM matrix_types '
            + 'WHERE id <= $1 ORDER BY id', [3]);
          out.rows = typed(r.rows);
          out.fields = r.fields.map((f) => [f.name, f.dataTypeID]);
          const big = await client.query('SELECT count(*) AS n, 7::int AS seven, 2.5::float8 AS f FROM scratch');
          out.big = typed(big.rows);
        } else if (scenario === 'cursor') {
          await client.query('BEGIN');
          const cursor = client.query(new Cursor('SELECT id, born FROM matrix_types WHERE id <= $1 ORDER BY id', [10]));
          out.batches = [];
          for (;;) {
            const rows = await cursor.read(4);
            if (rows.length === 0) break;
            out.batches.push(typed(rows));
          }
          await cursor.close();
          await client.query('COMMIT');
          out.after = (await client.query('SELECT 1 AS ok')).rows;
        } else if (scenario === 'phi') {
          out.rows = (await client.query('SELECT id, ssn, full_name FROM patients WHERE id = $1', [1])).rows;
          out.simple = (await client.query('SELECT id, ssn, full_name FROM patients WHERE id = 2')).rows;
          const cursor = client.query(new Cursor('SELECT id, ssn FROM patients WHERE id <= 3 ORDER BY id'));
          out.cursor = await cursor.read(10);
          await cursor.close();
        }
      } finally {
        await client.end();
      }
      console.log(JSON.stringify(out));
    }

    // pg-cursor leaves the client's query_timeout timer running, which would keep node alive for 60 s.
    main().then(() => process.exit(0)).catch((error) => {
      console.error(error && error.stack ? error.stack : String(error));
      process.exit(1);
    });
    """
)


@pytest.fixture(scope="module")
def node_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """node-postgres and pg-cursor installed with npm into a pytest tmp dir, and the probe script beside them."""
    assert shutil.which("node") and shutil.which("npm"), "node-postgres tests need node and npm"
    folder = tmp_path_factory.mktemp("node-pg")
    (folder / "package.json").write_text('{"name": "matrix-probe", "private": true}')
    installed = run(["npm", "install", "--no-audit", "--no-fund", "--silent", "pg", "pg-cursor"], cwd=folder)
    assert installed.returncode == 0, installed.stderr
    (folder / "probe.js").write_text(_NODE_PROBE)
    return folder


def node_run(node_probe: Path, dsn: str, scenario: str) -> dict[str, Any]:
    done = run(["node", "probe.js", dsn, scenario], cwd=node_probe)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_node_postgres_multi_statement_reads_are_held(agent: dict[str, Any], node_probe: Path) -> None:
    """Several statements in one request are held for review (lineage and masking are per statement), with the
    approval SQLSTATE and the ticket in the message; node-postgres reports it as an error."""
    done = run(["node", "probe.js", agent["dsn"], "multi"], cwd=node_probe)
    assert done.returncode != 0 and "approval required: ticket" in done.stderr


@pytest.mark.parametrize("scenario", ["simple", "params", "types", "cursor"])
def test_node_postgres_matches_postgresql(
    services: Any, agent: dict[str, Any], node_probe: Path, matrix_types: str, scenario: str
) -> None:
    gateway = node_run(node_probe, agent["dsn"], scenario)
    direct = node_run(node_probe, direct_dsn(services), scenario)
    assert gateway == direct
    if scenario == "types":
        assert gateway["rows"][0]["id"] == ["number", 1]  # int4 is a JavaScript number
        assert gateway["rows"][0]["scores"][0] == "array"


def test_node_postgres_phi_is_masked(services: Any, agent: dict[str, Any], node_probe: Path) -> None:
    gateway = node_run(node_probe, agent["dsn"], "phi")
    no_raw_phi(services, json.dumps(gateway))
    [row] = gateway["rows"]
    assert_masked(services, 1, row["ssn"], row["full_name"])
    [row] = gateway["simple"]
    assert_masked(services, 2, row["ssn"], row["full_name"])
    assert [int(r["id"]) for r in gateway["cursor"]] == [1, 2, 3]
    for r in gateway["cursor"]:
        assert_masked(services, int(r["id"]), r["ssn"])


# --------------------------------------------------------------------------------------------------------------
# pg_dump --schema-only
# --------------------------------------------------------------------------------------------------------------


def _pg_dump(host: str, port: int, user: str, password: str, dbname: str, selection: tuple[str, ...]) -> Any:
    args = [
        "pg_dump",
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        "--no-subscriptions",
        "-h",
        host,
        "-p",
        str(port),
        "-U",
        user,
    ]
    return run([*args, *selection, dbname], env={"PGPASSWORD": password, "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT)})


# A whole-database dump is not a fair comparison: the read role itself cannot dump the worker's ``phigate``
# schema (execution ledger), so pg_dump fails straight against PostgreSQL too. The clinic's tables are what an
# agent's user would dump; a schema of its own (types and functions) is dumped below.
@pytest.mark.parametrize(
    "selection",
    [("-t", "diagnosis_codes", "-t", "patients", "-t", "encounters", "-t", "prescriptions")],
    ids=["clinic-tables"],
)
def test_pg_dump_schema_only(services: Any, agent: dict[str, Any], selection: tuple[str, ...]) -> None:
    """pg_dump through the gateway: its session set-up (search_path '', statement_timeout 0 run as the limit,
    synchronize_seqscans, set_config through pg_settings, LOCK ... IN ACCESS SHARE MODE) passes, and the schema it
    writes is PostgreSQL's. ``--no-subscriptions``: pg_subscription holds connection strings and is denied."""
    d = url_parts(direct_dsn(services))
    direct = _pg_dump(d["host"], d["port"], d["user"], d["password"], d["dbname"], selection)
    assert direct.returncode == 0, direct.stderr
    gateway = _pg_dump("127.0.0.1", agent["port"], agent["name"], agent["token"], "clinic", selection)
    assert gateway.returncode == 0, gateway.stderr[-3000:]
    for table in ("diagnosis_codes", "patients", "encounters", "prescriptions"):
        assert f"CREATE TABLE public.{table} (" in gateway.stdout
    assert "ssn text NOT NULL" in gateway.stdout

    def body(dump: str) -> list[str]:  # less the banner and \restrict's random key, which differ per run
        return [line for line in dump.splitlines() if not line.startswith(("-- Dumped", "\\restrict", "\\unrestrict"))]

    assert body(gateway.stdout) == body(direct.stdout)


@pytest.fixture
def dump_schema(services: Any) -> Iterator[str]:
    """A schema with an enum, a composite, a domain and a function: pg_dump reads their definitions with SQL
    PREPARE and EXECUTE (one prepared query per kind of object, since PostgreSQL 15)."""
    reader = environment.READ_ROLE
    with psycopg.connect(services.target.owner_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA dump_kinds")
        conn.execute("CREATE TYPE dump_kinds.mood AS ENUM ('sad', 'ok', 'happy')")
        conn.execute("CREATE TYPE dump_kinds.point AS (x int, y int)")
        conn.execute("CREATE DOMAIN dump_kinds.positive AS int CHECK (VALUE > 0)")
        conn.execute("CREATE FUNCTION dump_kinds.twice(n int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT n * 2'")
        conn.execute(
            "CREATE TABLE dump_kinds.visits (id int PRIMARY KEY, mood dump_kinds.mood, spot dump_kinds.point, "
            "n dump_kinds.positive)"
        )
        conn.execute(f'GRANT USAGE ON SCHEMA dump_kinds TO "{reader}"')
        conn.execute(f'GRANT SELECT ON dump_kinds.visits TO "{reader}"')
    mark_classified("visits", schema="dump_kinds")
    time.sleep(1.5)  # past the test gateway's catalog TTL (CATALOG_TTL_SECONDS=1)
    yield "dump_kinds"
    with psycopg.connect(services.target.owner_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA dump_kinds CASCADE")


def test_pg_dump_of_a_schema_with_types_and_functions(services: Any, agent: dict[str, Any], dump_schema: str) -> None:
    """pg_dump prepares its per-object catalog queries (``PREPARE dumpEnumType(pg_catalog.oid) AS ...``) and
    EXECUTEs them once per object: the gateway judges each prepared query and runs the EXECUTEs under that
    judgement, so the dump is PostgreSQL's own, byte for byte (was: PREPARE denied, pg_dump failed)."""
    d = url_parts(direct_dsn(services))
    selection = ("-n", dump_schema)
    direct = _pg_dump(d["host"], d["port"], d["user"], d["password"], d["dbname"], selection)
    assert direct.returncode == 0, direct.stderr
    gateway = _pg_dump("127.0.0.1", agent["port"], agent["name"], agent["token"], "clinic", selection)
    assert gateway.returncode == 0, gateway.stderr[-3000:]
    for definition in (
        "CREATE TYPE dump_kinds.mood AS ENUM",
        "CREATE TYPE dump_kinds.point AS (",
        "CREATE DOMAIN dump_kinds.positive AS integer",
        "CREATE FUNCTION dump_kinds.twice(",
        "CREATE TABLE dump_kinds.visits (",
    ):
        assert definition in gateway.stdout

    def body(dump: str) -> list[str]:
        return [line for line in dump.splitlines() if not line.startswith(("-- Dumped", "\\restrict", "\\unrestrict"))]

    assert body(gateway.stdout) == body(direct.stdout)


# --------------------------------------------------------------------------------------------------------------
# asyncpg
# --------------------------------------------------------------------------------------------------------------


def arun(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout=90)

    return asyncio.run(bounded())


def test_asyncpg_pool_release_reset_makes_no_tickets(agent: dict[str, Any]) -> None:
    """Releasing a connection runs asyncpg's reset (``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL;``): it must not open approval tickets, nor break the next checkout."""
    before = tickets_of(agent)

    async def work() -> list[int]:
        pool = await asyncpg.create_pool(agent["dsn"], min_size=1, max_size=2, timeout=CONNECT_TIMEOUT)
        try:
            seen = []
            for i in range(1, 16):
                async with pool.acquire(timeout=CONNECT_TIMEOUT) as conn:
                    seen.append(await conn.fetchval("SELECT id FROM scratch WHERE id = $1", i))
            return seen
        finally:
            await asyncio.wait_for(pool.close(), timeout=20)

    assert arun(work()) == list(range(1, 16))
    assert tickets_of(agent) == before


def test_asyncpg_pool_explicit_reset_statement(services: Any, agent: dict[str, Any]) -> None:
    """The reset asyncpg sends on release, sent by hand: PostgreSQL runs it (the read role may) without a word."""
    reset = "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"
    before = tickets_of(agent)

    async def work(dsn: str) -> str:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
        try:
            return str(await conn.execute(reset))
        finally:
            await conn.close(timeout=10)

    assert arun(work(agent["dsn"])) == arun(work(direct_dsn(services)))
    assert tickets_of(agent) == before


async def _asyncpg_types(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    try:
        rows = await conn.fetch(
            "SELECT id, tags, scores, mood, spot, span, born, seen_at, amount FROM matrix_types WHERE id <= $1 "
            "ORDER BY id",
            4,
        )
        statement = await conn.prepare("SELECT id, mood, span FROM matrix_types WHERE id = $1")
        prepared = [tuple(await statement.fetchrow(i)) for i in range(1, 8)]
        attributes = [(a.name, a.type.name, a.type.kind) for a in statement.get_attributes()]
        parameters = [(t.name, t.kind) for t in statement.get_parameters()]
        return {
            "rows": [tuple((type(v).__name__, repr(v)) for v in row.values()) for row in rows],
            "prepared": prepared,
            "attributes": attributes,
            "parameters": parameters,
        }
    finally:
        await conn.close(timeout=10)


def test_asyncpg_introspects_arrays_enums_composites_ranges(
    services: Any, agent: dict[str, Any], matrix_types: str
) -> None:
    gateway = arun(_asyncpg_types(agent["dsn"]))
    direct = arun(_asyncpg_types(direct_dsn(services)))
    assert gateway == direct
    assert gateway["rows"][0][1] == ("list", "['t1', 'u']")
    assert gateway["rows"][0][4][0] == "Record" and gateway["rows"][0][5][0] == "Range"


async def _asyncpg_cursor(dsn: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    try:
        out = []
        async with conn.transaction():
            async for record in conn.cursor("SELECT id, born, amount FROM matrix_types ORDER BY id", prefetch=7):
                out.append(tuple(record))
            cursor = await conn.cursor("SELECT id FROM matrix_types ORDER BY id")
            out.append(tuple(r[0] for r in await cursor.fetch(5)))
            await cursor.forward(10)
            out.append(tuple(r[0] for r in await cursor.fetch(3)))
        return out
    finally:
        await conn.close(timeout=10)


def test_asyncpg_cursor_iteration_in_a_transaction(services: Any, agent: dict[str, Any], matrix_types: str) -> None:
    gateway = arun(_asyncpg_cursor(agent["dsn"]))
    assert gateway == arun(_asyncpg_cursor(direct_dsn(services)))
    assert len(gateway) == 42 and gateway[0] == (1, datetime.date(2020, 1, 2), decimal.Decimal("1.25"))


def test_asyncpg_prepared_phi_is_masked(services: Any, agent: dict[str, Any]) -> None:
    async def work() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(agent["dsn"], timeout=CONNECT_TIMEOUT)
        try:
            statement = await conn.prepare("SELECT id, ssn, full_name FROM patients WHERE id = $1")
            rows = [tuple(await statement.fetchrow(i)) for i in range(1, 7)]
            async with conn.transaction():
                async for record in conn.cursor("SELECT id, ssn FROM patients WHERE id <= 3 ORDER BY id", prefetch=2):
                    rows.append(tuple(record))
            return rows
        finally:
            await conn.close(timeout=10)

    rows = arun(work())
    no_raw_phi(services, repr(rows))
    for row in rows:
        assert_masked(services, int(row[0]), row[1], row[2] if len(row) > 2 else None)


# --------------------------------------------------------------------------------------------------------------
# psycopg 3
# --------------------------------------------------------------------------------------------------------------


def _pipeline_trace(dsn: str, bad: str) -> list[str]:
    """Outcome of each statement of a pipeline with a failing one in the middle, then of the session after it."""
    trace: list[str] = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
        conn.execute("SET statement_timeout = '60s'")
        cursors = []
        try:
            with conn.pipeline():
                cursors.append(conn.execute("SELECT id, label FROM scratch WHERE id = %s", (1,)))
                cursors.append(conn.execute("SELECT count(*) FROM diagnosis_codes"))
                try:
                    cursors.append(conn.execute(bad))
                except psycopg.Error as exc:
                    trace.append(f"execute-error:{type(exc).__name__}")
                cursors.append(conn.execute("SELECT id FROM scratch WHERE id = %s", (3,)))
        except psycopg.Error as exc:
            trace.append(f"pipeline-error:{exc.sqlstate or type(exc).__name__}")
        for cursor in cursors:
            try:
                trace.append(f"rows:{cursor.fetchall()}")
            except psycopg.Error as exc:
                trace.append(f"fetch-error:{type(exc).__name__}")
        trace.append(f"after:{conn.execute('SELECT 42').fetchone()}")
        trace.append(f"status:{conn.info.transaction_status.name}")
    return trace


def _settled(trace: list[str]) -> list[str]:
    """What does not depend on when the client hears of the error: psycopg raises it at the next ``execute`` if
    the error has arrived by then, else at the pipeline's end, so whether the statement after it has a cursor
    (whose fetch then fails) is timing, on any server. The rows of the statements before it and the session
    after it are not."""
    return [entry for entry in trace if entry.startswith(("rows:", "after:", "status:"))]


def test_psycopg_pipeline_with_an_upstream_error_behaves_like_postgresql(services: Any, agent: dict[str, Any]) -> None:
    gateway = _pipeline_trace(agent["dsn"], "SELECT 1 / (id - id) FROM scratch WHERE id = 1")
    direct = _pipeline_trace(direct_dsn(services), "SELECT 1 / (id - id) FROM scratch WHERE id = 1")
    assert _settled(gateway) == _settled(direct)
    assert "pipeline-error:22012" in gateway and "pipeline-error:22012" in direct


def test_psycopg_pipeline_with_a_held_statement_behaves_like_an_error(services: Any, agent: dict[str, Any]) -> None:
    """A held statement inside a pipeline fails it the way a refused statement fails one in PostgreSQL (the read
    role's read-only error directly; HA001 through the gateway): the same statements run, the rest abort."""
    held = "DELETE FROM scratch WHERE id = 49"
    gateway = _pipeline_trace(agent["dsn"], held)
    direct = _pipeline_trace(direct_dsn(services), held)
    assert "pipeline-error:HA001" in gateway
    assert "pipeline-error:25006" in direct  # the read role's sessions are read-only
    assert _settled(gateway) == _settled(direct)


def _named_cursor(dsn: str, binary: bool) -> list[Any]:
    with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT) as conn:
        out: list[Any] = []
        with conn.cursor(name="matrix_named", binary=binary) as cursor:
            cursor.itersize = 7
            cursor.execute(
                "SELECT id, born, seen_at, amount, scores FROM matrix_types WHERE id <= %s ORDER BY id", (20,)
            )
            out.append(cursor.fetchmany(3))
            out.append(list(cursor))
            out.append([(c.name, c.type_code) for c in cursor.description or []])
        conn.commit()
        with conn.cursor(name="matrix_hold", withhold=True) as cursor:
            cursor.execute("SELECT id, born FROM matrix_types ORDER BY id")
            conn.commit()
            out.append(cursor.fetchmany(2))
        return out


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_named_cursor_keeps_python_types(
    services: Any, agent: dict[str, Any], matrix_types: str, binary: bool
) -> None:
    gateway = _named_cursor(agent["dsn"], binary)
    assert gateway == _named_cursor(direct_dsn(services), binary)
    first = gateway[0][0]
    assert first == (1, datetime.date(2020, 1, 2), first[2], decimal.Decimal("1.25"), [1, 2])
    assert isinstance(first[2], datetime.datetime) and first[2].tzinfo is not None


def test_psycopg_named_cursor_over_phi_is_masked(services: Any, agent: dict[str, Any]) -> None:
    with psycopg.connect(agent["dsn"], connect_timeout=CONNECT_TIMEOUT) as conn:
        with conn.cursor(name="phi_named") as cursor:
            cursor.itersize = 2
            cursor.execute("SELECT id, ssn, full_name FROM patients WHERE id <= 5 ORDER BY id")
            rows = list(cursor)
        conn.commit()
    no_raw_phi(services, repr(rows))
    for row in rows:
        assert_masked(services, int(row[0]), row[1], row[2])
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]  # bigint stays an int


def _binary_cursor(dsn: str) -> list[Any]:
    with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT) as conn, conn.cursor(binary=True) as cursor:
        rows = cursor.execute(
            "SELECT id, tags, scores, born, seen_at, amount, span FROM matrix_types WHERE id <= %s ORDER BY id", (5,)
        ).fetchall()
        prepared = [
            cursor.execute("SELECT id, born FROM matrix_types WHERE id = %s", (i,), prepare=True).fetchone()
            for i in range(1, 4)
        ]
        return [rows, prepared]


def test_psycopg_binary_cursor_matches_postgresql(services: Any, agent: dict[str, Any], matrix_types: str) -> None:
    assert _binary_cursor(agent["dsn"]) == _binary_cursor(direct_dsn(services))


# --------------------------------------------------------------------------------------------------------------
# SQLAlchemy 2
# --------------------------------------------------------------------------------------------------------------


def _sa_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


def _sqlalchemy_stream(dsn: str) -> list[Any]:
    from sqlalchemy import create_engine, text

    engine = create_engine(_sa_url(dsn), connect_args={"connect_timeout": CONNECT_TIMEOUT})
    try:
        out: list[Any] = []
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, max_row_buffer=5).execute(
                text("SELECT id, born, seen_at, amount FROM matrix_types ORDER BY id")
            )
            out.append([tuple(row) for row in result])
            result = conn.execution_options(yield_per=4).execute(
                text("SELECT id, label FROM scratch WHERE id <= :n ORDER BY id"), {"n": 10}
            )
            out.append([[tuple(row) for row in part] for part in result.partitions()])
        return out
    finally:
        engine.dispose()


def test_sqlalchemy_stream_results_and_yield_per(services: Any, agent: dict[str, Any], matrix_types: str) -> None:
    gateway = _sqlalchemy_stream(agent["dsn"])
    assert gateway == _sqlalchemy_stream(direct_dsn(services))
    assert len(gateway[0]) == 40 and sum(len(part) for part in gateway[1]) == 10


def test_sqlalchemy_streamed_phi_is_masked_and_foreign_keys_reflect(services: Any, agent: dict[str, Any]) -> None:
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(_sa_url(agent["dsn"]), connect_args={"connect_timeout": CONNECT_TIMEOUT})
    try:
        foreign_keys = inspect(engine).get_foreign_keys("prescriptions")
        assert [(fk["constrained_columns"], fk["referred_table"], fk["referred_columns"]) for fk in foreign_keys] == [
            (["encounter_id"], "encounters", ["id"])
        ]
        with engine.connect() as conn:
            result = conn.execution_options(yield_per=2).execute(
                text("SELECT id, ssn, full_name FROM patients WHERE id <= 5 ORDER BY id")
            )
            rows = [tuple(row) for row in result]
    finally:
        engine.dispose()
    no_raw_phi(services, repr(rows))
    for row in rows:
        assert_masked(services, int(row[0]), row[1], row[2])
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]  # bigint stays an int


# --------------------------------------------------------------------------------------------------------------
# Django: inspectdb and QuerySet.iterator() with USE_TZ
# --------------------------------------------------------------------------------------------------------------

_DJANGO_SETTINGS = """
import json, os
_db = json.loads(os.environ["MATRIX_DB"])
SECRET_KEY = "matrix-only"
USE_TZ = True
TIME_ZONE = "Europe/Paris"
INSTALLED_APPS = ["matrixapp"]
DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", **_db,
                         "OPTIONS": {"connect_timeout": 10}}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
"""

_DJANGO_MODELS = """
from django.db import models


class MatrixTypes(models.Model):
    id = models.IntegerField(primary_key=True)
    born = models.DateField()
    seen_at = models.DateTimeField()
    amount = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        managed = False
        db_table = "matrix_types"


class Patient(models.Model):
    id = models.BigIntegerField(primary_key=True)
    ssn = models.TextField()
    full_name = models.TextField()

    class Meta:
        managed = False
        db_table = "patients"
"""

_DJANGO_SCRIPT = """
import io, json, sys
import django
django.setup()
from django.core.management import call_command
from matrixapp.models import MatrixTypes, Patient

scenario = sys.argv[1]
if scenario == "inspectdb":
    out = io.StringIO()
    call_command("inspectdb", "diagnosis_codes", "patients", "encounters", "prescriptions", stdout=out)
    print(out.getvalue())
elif scenario == "iterator":
    rows = [
        [r.id, r.born.isoformat(), r.seen_at.isoformat(), str(r.seen_at.tzinfo), str(r.amount)]
        for r in MatrixTypes.objects.filter(id__lte=12).order_by("id").iterator(chunk_size=5)
    ]
    print(json.dumps(rows))
elif scenario == "phi":
    rows = [[p.id, p.ssn, p.full_name] for p in Patient.objects.filter(id__lte=4).order_by("id").iterator(chunk_size=2)]
    print(json.dumps(rows))
"""


@pytest.fixture(scope="module")
def django_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("django-matrix")
    (folder / "matrix_settings.py").write_text(_DJANGO_SETTINGS)
    (folder / "matrixapp").mkdir()
    (folder / "matrixapp" / "__init__.py").write_text("")
    (folder / "matrixapp" / "models.py").write_text(_DJANGO_MODELS)
    (folder / "probe.py").write_text(_DJANGO_SCRIPT)
    return folder


def django_run(project: Path, url: str, scenario: str) -> str:
    p = url_parts(url)
    db = {"NAME": p["dbname"], "USER": p["user"], "PASSWORD": p["password"], "HOST": p["host"], "PORT": str(p["port"])}
    env = {
        "DJANGO_SETTINGS_MODULE": "matrix_settings",
        "PYTHONPATH": str(project),
        "MATRIX_DB": json.dumps(db),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    done = run([sys.executable, "probe.py", scenario], env=env, cwd=project)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_django_inspectdb(services: Any, agent: dict[str, Any], django_project: Path) -> None:
    gateway = django_run(django_project, agent["dsn"], "inspectdb")
    direct = django_run(django_project, direct_dsn(services), "inspectdb")

    # Identical, except that a masked column (date_of_birth masked to a year, admitted_at...) is announced as
    # text: the mask's output is text in either format.
    pairs = list(zip(gateway.splitlines(), direct.splitlines(), strict=True))
    differing = [(ours, theirs) for ours, theirs in pairs if ours != theirs]
    for ours, theirs in differing:
        assert ours.split("=")[0] == theirs.split("=")[0] and ours.endswith("models.TextField()"), (ours, theirs)
    assert ("    date_of_birth = models.TextField()", "    date_of_birth = models.DateField()") in differing
    assert "class Patients(models.Model):" in gateway and "ssn = models.TextField()" in gateway
    assert "models.ForeignKey(" in gateway


def test_django_queryset_iterator_with_use_tz(
    services: Any, agent: dict[str, Any], django_project: Path, matrix_types: str
) -> None:
    gateway = json.loads(django_run(django_project, agent["dsn"], "iterator"))
    assert gateway == json.loads(django_run(django_project, direct_dsn(services), "iterator"))
    assert gateway[0] == [1, "2020-01-02", "2024-03-01T13:00:00+00:00", "UTC", "1.25"]


def test_django_iterator_over_phi_is_masked(services: Any, agent: dict[str, Any], django_project: Path) -> None:
    rows = json.loads(django_run(django_project, agent["dsn"], "phi"))
    no_raw_phi(services, json.dumps(rows))
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    for patient_id, ssn, full_name in rows:
        assert_masked(services, patient_id, ssn, full_name)


# --------------------------------------------------------------------------------------------------------------
# psql
# --------------------------------------------------------------------------------------------------------------


def psql(dsn: str, *commands: str) -> str:
    args = ["psql", dsn, "-X", "-v", "ON_ERROR_STOP=1"]
    for command in commands:
        args += ["-c", command]
    done = run(args, env={"PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT)})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("command", [r"\d patients", r"\dt", r"\du", r"\d+ encounters", r"\dT"])
def test_psql_describe_commands_match_postgresql(services: Any, agent: dict[str, Any], command: str) -> None:
    assert psql(agent["dsn"], command) == psql(direct_dsn(services), command)


def test_psql_fetch_count_uses_a_cursor_and_matches_postgresql(
    services: Any, agent: dict[str, Any], matrix_types: str
) -> None:
    query = "SELECT id, born, amount, scores FROM matrix_types WHERE id <= 7 ORDER BY id"
    gateway = psql(agent["dsn"], r"\set FETCH_COUNT 2", query)
    assert gateway == psql(direct_dsn(services), r"\set FETCH_COUNT 2", query)
    assert "(7 rows)" in gateway


def test_psql_fetch_count_over_phi_is_masked(services: Any, agent: dict[str, Any]) -> None:
    out = psql(agent["dsn"], r"\set FETCH_COUNT 2", "SELECT id, ssn FROM patients WHERE id <= 5 ORDER BY id")
    no_raw_phi(services, out)
    assert "(5 rows)" in out
    for patient_id, (ssn, _, _) in real_patients(services, 5).items():
        assert f"{patient_id} | ***{ssn[-4:]}" in out
