"""Deterministic pseudonyms: stable across queries and sessions (joins and GROUP BY keep working), and
different under another key (a leaked result from one deployment cannot be matched against another's)."""

from __future__ import annotations

from urllib.parse import quote

import psycopg
import pytest

from identity.roles import Role
from policy.masking import pseudonym
from tests.factories import agent_client, make_agent, make_user

pytestmark = pytest.mark.usefixtures("services")


def test_same_value_same_key_same_pseudonym_other_key_differs() -> None:
    assert pseudonym("Jane Doe", "name", b"k" * 32) == pseudonym("Jane Doe", "name", b"k" * 32)
    assert pseudonym("Jane Doe", "name", b"k" * 32) != pseudonym("Jane Doe", "name", b"j" * 32)
    assert pseudonym("Jane Doe", "name", b"k" * 32) != pseudonym("Jane Doe", "mrn", b"k" * 32)  # typed
    assert pseudonym("Jane Doe", "name", b"k" * 32) != pseudonym("Jane Doe ", "name", b"k" * 32)


def test_stable_across_queries_sessions_and_fronts(services) -> None:  # type: ignore[no-untyped-def]
    sql = "SELECT full_name, mrn FROM patients WHERE id = 7"
    _, first_api = agent_client(make_user(Role.ENGINEER))
    _, second_api = agent_client(make_user(Role.ENGINEER))
    body = {"datasource": "clinic", "sql": sql}
    answers = [api.post("/api/v1/queries", body, format="json").json() for api in (first_api, second_api)]
    assert all("rows" in answer for answer in answers), answers
    over_http = [answer["rows"][0] for answer in answers]
    agent, token = make_agent(make_user(Role.ENGINEER))
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    with psycopg.connect(dsn) as conn:
        over_wire = list(conn.execute(sql).fetchone())  # type: ignore[arg-type]
    assert over_http[0] == over_http[1] == over_wire
    assert over_wire[0].startswith("name_") and over_wire[1].startswith("mrn_")


def test_pseudonyms_still_join_and_group(services) -> None:  # type: ignore[no-untyped-def]
    _, api = agent_client(make_user(Role.ENGINEER))
    rows = api.post(
        "/api/v1/queries",
        {
            "datasource": "clinic",
            "sql": "SELECT p.full_name FROM patients p JOIN patients q ON q.id = p.id WHERE p.id IN (3, 3, 4)",
        },
        format="json",
    ).json()["rows"]
    names = [row[0] for row in rows]
    assert len(names) == 2 and len(set(names)) == 2 and all(name.startswith("name_") for name in names)
