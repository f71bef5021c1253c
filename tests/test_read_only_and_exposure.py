"""Issue 12 over the real fronts: read-only sessions, EXPLAIN's last ANALYZE, exposing functions, views' bodies.

Each statement goes through the HTTP API, MCP (streamable HTTP, the real SDK client) and the wire gateway
(psycopg, extended and simple protocol) as an agent, against the real gateway process and target database:

* ``BEGIN READ WRITE`` and ``SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE`` are refused (42501 on the
  wire), the session stays read-only, and neither a large object nor a temporary table can be created after.
* ``EXPLAIN (ANALYZE false, ANALYZE true) SELECT random()`` runs the statement, so it is held, not allowed.
* ``pg_stat_get_activity(NULL)`` and its friends are denied: another agent's statement (with its literal) never
  comes back.
* A view over a volatile function is held, and a view over ``pg_stat_activity`` denied, through their bodies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from identity.roles import Role
from tests import environment
from tests.factories import agent_client, make_agent, make_user
from tests.test_mcp import call, http_session

pytestmark = pytest.mark.usefixtures("services")

HELD, DENIED = "held", "denied"
HTTP_STATUS = {HELD: 202, DENIED: 403}
MCP_STATUS = {HELD: "pending_approval", DENIED: "denied"}
WIRE_SQLSTATE = {HELD: "HA001", DENIED: "42501"}

READ_WRITE = [
    "BEGIN READ WRITE",
    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE",
]
EXPOSING = [
    "SELECT * FROM pg_stat_get_activity(NULL)",
    "SELECT a.query FROM pg_catalog.pg_stat_get_activity(NULL) a WHERE a.pid <> pg_backend_pid()",
    "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
    "SELECT (SELECT string_agg(query, ' ') FROM pg_stat_activity)",
    "SELECT * FROM pg_stat_get_wal_receiver()",
    "SELECT statement FROM pg_cursors",
    "SELECT * FROM pg_mcv_list_items(NULL)",
]
LAST_ANALYZE_WINS = "EXPLAIN (ANALYZE false, ANALYZE true) SELECT random()"
VOLATILE_VIEW = f"volatile_probe_{environment.RUN_ID}"
SNOOPING_VIEW = f"snooping_probe_{environment.RUN_ID}"


# --- the three fronts -------------------------------------------------------------------------------------------


def http_answers(sqls: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """(status code, body) of each statement sent to the HTTP API by a fresh agent."""
    _, client = agent_client(make_user(Role.ENGINEER))
    answers = []
    for sql in sqls:
        response = client.post("/api/v1/queries", {"datasource": "clinic", "sql": sql}, format="json")
        answers.append((response.status_code, response.json()))
    return answers


def mcp_answers(web_url: str, sqls: list[str]) -> list[dict[str, Any]]:
    """The MCP query tool's structured answer for each statement, from a fresh agent."""
    _, token = make_agent(make_user(Role.ENGINEER))

    async def story() -> list[dict[str, Any]]:
        async with http_session(web_url, token) as session:
            return [await call(session, "query", datasource="clinic", sql=sql, reason="issue 12") for sql in sqls]

    return asyncio.run(story())


def wire_dsn(port: int) -> str:
    """A fresh agent's connection string for the wire gateway."""
    agent, token = make_agent(make_user(Role.ENGINEER))
    return f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{port}/clinic"


def wire_sqlstate(conn: psycopg.Connection, sql: str, *, simple: bool = False) -> str | None:
    """The SQLSTATE the gateway answers with (None when the statement ran)."""
    try:
        if simple:
            with psycopg.ClientCursor(conn) as cursor:
                cursor.execute(sql)
        else:
            conn.execute(sql)
    except psycopg.Error as error:
        return error.sqlstate
    return None


def assert_refused_on_every_front(web_url: str, port: int, sqls: list[str], verdict: str) -> None:
    """Each statement is held (or denied) over HTTP, MCP and the wire (extended and simple protocol)."""
    for sql, (code, body) in zip(sqls, http_answers(sqls), strict=True):
        assert code == HTTP_STATUS[verdict], (sql, body)
    for sql, answer in zip(sqls, mcp_answers(web_url, sqls), strict=True):
        assert answer["status"] == MCP_STATUS[verdict], (sql, answer)
    with psycopg.connect(wire_dsn(port), autocommit=True) as conn:
        for sql in sqls:
            assert wire_sqlstate(conn, sql) == WIRE_SQLSTATE[verdict], sql
            assert wire_sqlstate(conn, sql, simple=True) == WIRE_SQLSTATE[verdict], sql


# --- read-only sessions ------------------------------------------------------------------------------------------


def owner_count(services: Any, sql: str) -> int:
    with psycopg.connect(services.target.owner_url) as conn:
        return int(conn.execute(sql).fetchone()[0])  # type: ignore[index]


def test_read_write_is_refused_on_the_wire_and_the_session_stays_read_only(services) -> None:  # type: ignore[no-untyped-def]
    """No spelling of READ WRITE reaches the server; afterwards nothing can be created through the session."""
    large_objects = "SELECT count(*) FROM pg_largeobject_metadata"
    temp_tables = "SELECT count(*) FROM pg_class WHERE relname = 'rw_probe' AND relpersistence = 't'"
    before = owner_count(services, large_objects)
    with psycopg.connect(wire_dsn(services.gateway_port), autocommit=True) as conn:
        for sql in READ_WRITE:
            assert wire_sqlstate(conn, sql) == "42501", sql
            assert wire_sqlstate(conn, sql, simple=True) == "42501", sql
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert wire_sqlstate(conn, "SELECT lo_create(0)") is not None
        assert wire_sqlstate(conn, "CREATE TEMP TABLE rw_probe (a int)") is not None
        conn.execute("BEGIN READ ONLY")  # the harmless modes still work
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        conn.execute("COMMIT")
    assert owner_count(services, large_objects) == before
    assert owner_count(services, temp_tables) == 0


def test_read_write_is_denied_as_such_over_http_and_mcp(web) -> None:  # type: ignore[no-untyped-def]
    """The API fronts refuse it for what it is, not only because it needs a session."""
    for code, body in http_answers(READ_WRITE):
        assert code == 403 and any("READ WRITE is not allowed" in reason for reason in body["reasons"]), body
    for answer in mcp_answers(web.url, READ_WRITE):
        assert answer["status"] == "denied", answer
        assert any("READ WRITE is not allowed" in reason for reason in answer["reasons"]), answer


# --- EXPLAIN: the last ANALYZE wins --------------------------------------------------------------------------------


def test_explain_with_a_later_analyze_true_is_not_allowed(web, services) -> None:  # type: ignore[no-untyped-def]
    """EXPLAIN (ANALYZE false, ANALYZE true) runs its statement: a volatile one is held on every front."""
    assert_refused_on_every_front(web.url, services.gateway_port, [LAST_ANALYZE_WINS], HELD)


# --- value-exposing functions --------------------------------------------------------------------------------------


@pytest.fixture
def other_agents_statement(services) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Another agent's idle wire session whose last statement carries a literal (pg_stat_activity keeps it)."""
    marker = f"ssn-987-65-{environment.RUN_ID}"
    with psycopg.connect(wire_dsn(services.gateway_port), autocommit=True) as conn:
        assert conn.execute(f"SELECT '{marker}' AS note").fetchone() == (marker,)
        yield marker


def test_value_exposing_functions_are_denied_on_every_front(web, services, other_agents_statement) -> None:  # type: ignore[no-untyped-def]
    """pg_stat_get_activity(NULL) and friends: denied over HTTP, MCP and the wire, and the literal never leaks."""
    answers = http_answers(EXPOSING)
    for sql, (code, body) in zip(EXPOSING, answers, strict=True):
        assert code == 403, (sql, body)
        assert any("is denied: it exposes" in reason for reason in body["reasons"]), body
    mcp = mcp_answers(web.url, EXPOSING)
    assert [answer["status"] for answer in mcp] == ["denied"] * len(EXPOSING), mcp
    with psycopg.connect(wire_dsn(services.gateway_port), autocommit=True) as conn:
        wire = [(wire_sqlstate(conn, sql), wire_sqlstate(conn, sql, simple=True)) for sql in EXPOSING]
    assert wire == [("42501", "42501")] * len(EXPOSING)
    assert other_agents_statement not in f"{answers} {mcp}"


# --- views are classified through their definitions ----------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_views(services) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """A view over a volatile function and one over pg_stat_activity, made by the owner and dropped after."""
    with psycopg.connect(services.target.owner_url, autocommit=True) as conn:
        conn.execute(f"CREATE VIEW {VOLATILE_VIEW} AS SELECT id, random() AS r FROM scratch")
        conn.execute(f"CREATE VIEW {SNOOPING_VIEW} AS SELECT pid, query FROM pg_stat_activity")
        conn.execute(f'GRANT SELECT ON {VOLATILE_VIEW}, {SNOOPING_VIEW} TO "{environment.READ_ROLE}"')
    time.sleep(1.5)  # past the tests' 1 s catalog TTL: the gateway's next snapshot has both definitions
    yield
    with psycopg.connect(services.target.owner_url, autocommit=True) as conn:
        conn.execute(f"DROP VIEW IF EXISTS {VOLATILE_VIEW}, {SNOOPING_VIEW}")


def test_a_view_over_a_volatile_function_is_held_on_every_front(web, services, probe_views) -> None:  # type: ignore[no-untyped-def]
    """Selecting the view runs random(): held, with the reason naming the view."""
    sqls = [f"SELECT * FROM {VOLATILE_VIEW}", f"SELECT count(*) FROM (SELECT r FROM public.{VOLATILE_VIEW}) v"]
    assert_refused_on_every_front(web.url, services.gateway_port, sqls, HELD)
    (_, body), _ = http_answers(sqls)
    assert any(f"view public.{VOLATILE_VIEW}: volatile function random()" in r for r in body["reasons"]), body


def test_a_view_over_an_exposing_catalog_is_denied_on_every_front(web, services, probe_views) -> None:  # type: ignore[no-untyped-def]
    """The view's body reads pg_stat_activity: denied, whatever the view is called."""
    assert_refused_on_every_front(web.url, services.gateway_port, [f"SELECT * FROM {SNOOPING_VIEW}"], DENIED)
