"""Statements the parser cannot prove safe are held or denied, never run directly (non-negotiable 1).

Each case checks the HTTP answer *and* the database: the side effect the statement would have had is absent.
"""

from __future__ import annotations

import psycopg
import pytest

from identity.roles import Role
from tests.factories import agent_client, make_user

pytestmark = pytest.mark.usefixtures("services")


def submit(sql: str):  # type: ignore[no-untyped-def]
    _, client = agent_client(make_user(Role.ENGINEER))
    return client.post("/api/v1/queries", {"datasource": "clinic", "sql": sql}, format="json")


def scratch_row_exists(owner_url: str, row_id: int) -> bool:
    with psycopg.connect(owner_url) as conn:
        return conn.execute("SELECT count(*) FROM scratch WHERE id = %s", (row_id,)).fetchone() == (1,)


def probe_count(owner_url: str) -> int:
    with psycopg.connect(owner_url) as conn:
        return int(conn.execute("SELECT count(*) FROM execution_probe").fetchone()[0])  # type: ignore[index]


HELD_WITH_SIDE_EFFECT_ON_SCRATCH = [
    ("writable CTE", "WITH gone AS (DELETE FROM scratch WHERE id = {id} RETURNING *) SELECT * FROM gone"),
    ("multi-statement", "SELECT 1; DELETE FROM scratch WHERE id = {id}"),
    ("DO block", "DO $$ BEGIN DELETE FROM scratch WHERE id = {id}; END $$"),
    ("select for update", "SELECT * FROM scratch WHERE id = {id} FOR UPDATE"),
]


@pytest.mark.parametrize(
    ("what", "template"), HELD_WITH_SIDE_EFFECT_ON_SCRATCH, ids=[c[0] for c in HELD_WITH_SIDE_EFFECT_ON_SCRATCH]
)
def test_held_statements_do_not_run(services, what: str, template: str) -> None:  # type: ignore[no-untyped-def]
    row_id = 20 + HELD_WITH_SIDE_EFFECT_ON_SCRATCH.index((what, template))
    response = submit(template.format(id=row_id))
    assert response.status_code == 202, response.json()
    assert scratch_row_exists(services.target.owner_url, row_id)


def test_volatile_function_in_select_is_held_and_not_run(services) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(services.target.owner_url) as conn:
        before = conn.execute("SELECT last_value FROM execution_probe_id_seq").fetchone()
    response = submit("SELECT nextval('execution_probe_id_seq')")
    assert response.status_code == 202
    assert "volatile" in " ".join(response.json()["reasons"])
    with psycopg.connect(services.target.owner_url) as conn:
        assert conn.execute("SELECT last_value FROM execution_probe_id_seq").fetchone() == before


def test_unknown_function_is_held() -> None:
    response = submit("SELECT definitely_not_a_function(1)")
    assert response.status_code == 202
    assert "unknown function" in " ".join(response.json()["reasons"])


@pytest.mark.parametrize(
    "sql",
    [
        "COPY scratch TO PROGRAM 'touch /tmp/phigate-pwned'",
        "COPY scratch FROM PROGRAM 'echo 1'",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT * FROM scratch WHERE id IN (SELECT length(pg_read_file('/etc/hostname')))",
        "COMMIT; DELETE FROM scratch WHERE id = 33",
        "BEGIN; DELETE FROM scratch WHERE id = 33; COMMIT",
        "ALTER SYSTEM SET log_statement = 'none'",
        "CREATE ROLE sneaky LOGIN SUPERUSER",
        "DROP DATABASE postgres",
        "CREATE EXTENSION dblink",
        "SELECT query_to_xml('SELECT ssn FROM patients', true, false, '')",
    ],
)
def test_denied_statements(services, sql: str) -> None:  # type: ignore[no-untyped-def]
    response = submit(sql)
    assert response.status_code == 403, response.json()
    assert response.json()["status"] == "denied" and response.json()["reasons"]
    assert scratch_row_exists(services.target.owner_url, 33)


@pytest.mark.parametrize("sql", ["BEGIN", "SET statement_timeout = '1s'", "RESET ALL", "DECLARE c CURSOR FOR SELECT 1"])
def test_session_statements_are_refused_over_http(sql: str) -> None:
    """A pooled API connection must never carry one request's session state into the next."""
    response = submit(sql)
    assert response.status_code == 403
    assert "wire protocol" in response.json()["reasons"][0]


def test_unparsable_statement_never_runs(services) -> None:  # type: ignore[no-untyped-def]
    before = probe_count(services.target.owner_url)
    response = submit("INSERT INTO execution_probe (note) VALUES ('x') ON CONFLICT DO NOTHING WHAT")
    assert response.status_code == 400
    assert probe_count(services.target.owner_url) == before
