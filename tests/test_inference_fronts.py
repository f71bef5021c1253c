"""Issue 12's decoders, tried as an agent over every front: HTTP API, MCP (stdio) and the wire.

Each one either is held for review (the answer would depend on PHI beyond its mask) or runs with the computed
PHI withheld: the expression is replaced by a constant before the statement runs, so no error, NULL or timing
depends on the value, and a computed value never carries a pseudonym a guess could be checked against.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from identity.roles import Role
from tests import environment
from tests.factories import api_client, make_agent, make_user
from tests.test_mcp import call, stdio_session, token_file

pytestmark = pytest.mark.usefixtures("services")

DECODERS = {
    "count of a comparison per character": (
        "SELECT p.id, count(nullif(ascii(substr(p.ssn,1,1)) >= g, false)) FROM patients p "
        "CROSS JOIN generate_series(1,127) g WHERE p.id <= 3 GROUP BY p.id"
    ),
    "row count from generate_series": (
        "SELECT p.id FROM patients p, generate_series(1, ascii(substr(p.ssn,5,1))) g WHERE p.id = 1"
    ),
    "count of regexp matches": "SELECT (SELECT count(*) FROM regexp_matches(p.ssn, '9', 'g')) FROM patients p",
    "unnest of a split value": "SELECT unnest(string_to_array(p.ssn, '-')) FROM patients p WHERE p.id = 1",
    "count of non-NULL values": "SELECT count(full_name) FROM patients",
    "DISTINCT": "SELECT DISTINCT full_name FROM patients",
    "EXPLAIN with the last ANALYZE on": "EXPLAIN (ANALYZE false, ANALYZE true) SELECT * FROM patients WHERE id = 1",
    "EXPLAIN ANALYZE row counts": (
        "EXPLAIN (ANALYZE, COSTS off, TIMING off, SUMMARY off) SELECT 1 FROM patients WHERE id = 1 AND ascii(ssn) >= 50"
    ),
    "plain EXPLAIN of a PHI filter": "EXPLAIN SELECT 1 FROM patients WHERE ascii(ssn) >= 50",
}
ERROR_ORACLE = "SELECT p.id, 1 / (ascii(p.ssn) - ascii(p.ssn)) AS oracle FROM patients p ORDER BY p.id LIMIT 3"


def new_agent() -> tuple[str, str]:
    """A fresh agent's name and token (each test acts for its own engineer)."""
    agent, token = make_agent(make_user(Role.ENGINEER))
    return agent.name, token


def over_http(token: str, sql: str) -> tuple[str, list[list[Any]]]:
    response = api_client(token).post("/api/v1/queries", {"datasource": "clinic", "sql": sql}, format="json")
    body = response.json()
    return {"held": "pending"}.get(body["status"], body["status"]), body.get("rows", [])


def over_wire(port: int, token: str, agent_name: str, sql: str, binary: bool = False) -> tuple[str, list[list[Any]]]:
    dsn = f"postgresql://{agent_name}:{quote(token, safe='')}@127.0.0.1:{port}/clinic"
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            rows = conn.cursor(binary=binary).execute(sql).fetchall()
        except psycopg.Error as error:
            return {"HA001": "pending", "42501": "denied"}.get(error.sqlstate or "", f"failed {error.sqlstate}"), []
    return "executed", [list(row) for row in rows]


def over_mcp(tmp_path: Path, token: str, statements: list[str]) -> list[tuple[str, list[list[Any]]]]:
    async def run() -> list[tuple[str, list[list[Any]]]]:
        answers = []
        async with stdio_session(token_file(tmp_path, token)) as session:
            for sql in statements:
                body = await call(session, "query", datasource="clinic", sql=sql)
                status = {"pending_approval": "pending"}.get(body["status"], body["status"])
                answers.append((status, body.get("rows", [])))
        return answers

    return asyncio.run(run())


@pytest.mark.parametrize("sql", DECODERS.values(), ids=DECODERS.keys())
def test_decoders_are_held_over_http_and_wire(services, sql: str) -> None:  # type: ignore[no-untyped-def]
    name, token = new_agent()
    assert over_http(token, sql)[0] == "pending"
    assert over_wire(services.gateway_port, token, name, sql)[0] == "pending"


def test_decoders_are_held_over_mcp(tmp_path: Path) -> None:
    _, token = make_agent(make_user(Role.ENGINEER))
    answers = over_mcp(tmp_path, token, list(DECODERS.values()))
    assert [status for status, _ in answers] == ["pending"] * len(DECODERS)


def test_an_error_oracle_never_runs_on_any_front(services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``1 / (ascii(ssn) - ascii(ssn))`` fails on every row if it runs: withheld, it answers [redacted]."""
    name, token = new_agent()
    expected = [[1, "[redacted]"], [2, "[redacted]"], [3, "[redacted]"]]
    assert over_http(token, ERROR_ORACLE) == ("executed", expected)
    assert over_mcp(tmp_path, token, [ERROR_ORACLE]) == [("executed", expected)]
    for binary in (False, True):
        status, rows = over_wire(services.gateway_port, token, name, ERROR_ORACLE, binary=binary)
        assert status == "executed"
        assert [row[1] for row in rows] == ["[redacted]"] * 3


def test_a_guess_is_never_hashed_with_a_columns_key(services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A pseudonym of a computed value would let guesses be checked against real pseudonyms."""
    with psycopg.connect(services.target.owner_url) as conn:
        (real_name,) = conn.execute("SELECT full_name FROM patients WHERE id = 1").fetchone()  # type: ignore[misc]
    guess = real_name.replace("'", "''")
    oracle = f"SELECT CASE WHEN p.id < 0 THEN p.full_name ELSE '{guess}' END AS n FROM patients p WHERE p.id = 1"
    name, token = new_agent()
    _, [[pseudonym]] = over_http(token, "SELECT full_name FROM patients WHERE id = 1")
    assert pseudonym.startswith("name_")
    assert over_http(token, oracle) == ("executed", [["[redacted]"]])
    assert over_mcp(tmp_path, token, [oracle]) == [("executed", [["[redacted]"]])]
    assert over_wire(services.gateway_port, token, name, oracle) == ("executed", [["[redacted]"]])


def test_plain_explain_over_phi_runs_without_costs_and_is_not_redacted(services) -> None:  # type: ignore[no-untyped-def]
    name, token = new_agent()
    sql = "EXPLAIN SELECT id, ssn FROM patients WHERE id = 1"
    for status, rows in (over_http(token, sql), over_wire(services.gateway_port, token, name, sql)):
        assert status == "executed"
        plan = "\n".join(str(row[0]) for row in rows)
        assert "Scan" in plan and "patients" in plan, plan
        assert "[redacted]" not in plan
        assert "cost=" not in plan  # widths and row estimates are statistics of the values


def test_a_cursor_over_computed_phi_fetches_only_withheld_values(services) -> None:  # type: ignore[no-untyped-def]
    name, token = new_agent()
    dsn = f"postgresql://{name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    with psycopg.connect(dsn) as conn:
        conn.execute("DECLARE c CURSOR FOR SELECT id, upper(full_name) AS u, ssn || '' AS s FROM patients ORDER BY id")
        rows = conn.execute("FETCH 2 FROM c").fetchall()
    assert [list(row[1:]) for row in rows] == [["[redacted]", "[redacted]"]] * 2


def test_a_missing_column_on_a_phi_table_is_postgresqls_own_error(services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Not a ticket: PostgreSQL refuses the name before it reads a row, so its own answer is given."""
    sql = "SELECT id, no_such_column FROM patients WHERE ssn_typo = '1'"
    name, token = new_agent()
    response = api_client(token).post("/api/v1/queries", {"datasource": "clinic", "sql": sql}, format="json")
    assert response.status_code == 400, response.json()
    assert "does not exist" in response.json()["error"]
    dsn = f"postgresql://{name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.errors.UndefinedColumn):
        conn.execute(sql)
    [(status, _)] = over_mcp(tmp_path, token, [sql])
    assert status not in ("pending", "executed")


ORDINARY = {
    "masked read": "SELECT id, full_name, ssn, date_of_birth FROM patients WHERE id <= 3 ORDER BY id",
    "join on keys": (
        "SELECT p.full_name, e.admitted_at FROM patients p JOIN encounters e ON e.patient_id = p.id "
        "ORDER BY e.id LIMIT 5"
    ),
    "count of rows": "SELECT count(*) FROM patients",
    "aggregate on a non-PHI column": (
        "SELECT diagnosis_code, count(*) AS n FROM encounters GROUP BY diagnosis_code ORDER BY n DESC LIMIT 3"
    ),
    "grouped join": (
        "SELECT e.id, count(r.id) FROM encounters e LEFT JOIN prescriptions r ON r.encounter_id = e.id "
        "GROUP BY e.id ORDER BY e.id LIMIT 3"
    ),
}


@pytest.mark.parametrize("sql", ORDINARY.values(), ids=ORDINARY.keys())
def test_ordinary_work_runs_at_once(services, sql: str) -> None:  # type: ignore[no-untyped-def]
    name, token = new_agent()
    http_status, http_rows = over_http(token, sql)
    assert http_status == "executed", http_rows
    assert http_rows
    wire_status, wire_rows = over_wire(services.gateway_port, token, name, sql)
    assert wire_status == "executed"
    assert len(wire_rows) == len(http_rows)


def test_a_prepared_statement_follows_a_policy_change(services) -> None:  # type: ignore[no-untyped-def]
    """A prepared statement lives as long as the session: it is judged again once the snapshot it was decided
    under is replaced, so a column tagged since is masked on the next Execute."""
    from policy.models import DataSource, PhiColumn
    from tests.factories import mark_classified

    table = "prepared_then_tagged"
    with psycopg.connect(services.target.owner_url, autocommit=True) as owner:
        owner.execute(f"CREATE TABLE {table} AS SELECT id, ssn FROM patients ORDER BY id LIMIT 2")
        owner.execute(f'GRANT SELECT ON {table} TO "{environment.READ_ROLE}"')
        (real,) = owner.execute(f"SELECT ssn FROM {table} WHERE id = 1").fetchone()  # type: ignore[misc]
    mark_classified(table)
    name, token = new_agent()
    dsn = f"postgresql://{name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    sql = f"SELECT ssn FROM {table} WHERE id = %s"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute(sql, (1,), prepare=True).fetchone() == (real,)  # not tagged yet: as stored
            PhiColumn.objects.create(
                datasource=DataSource.objects.get(name="clinic"),
                schema_name="public",
                table_name=table,
                column_name="ssn",
                phi_type="ssn",
            )
            time.sleep(2.5)  # the gateway's snapshot (CATALOG_TTL_SECONDS=1 in tests) is replaced
            assert conn.execute(sql, (1,), prepare=True).fetchone() == ("***" + real.replace("-", "")[-4:],)
    finally:
        PhiColumn.objects.filter(table_name=table).delete()
        with psycopg.connect(services.target.owner_url, autocommit=True) as owner:
            owner.execute(f"DROP TABLE {table}")
