"""The bypass suite: techniques that leaked PHI in other products must not leak it here.

Every query runs through the HTTP API as an agent. Its answer must be held (202), denied (403), refused as
invalid (400) or, when it runs (200), contain no run of 8 characters from any real PHI value of the target
(read with the owner credential). Error messages count as answers. A subset is also run as approved tickets,
and their results are checked the same way.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from identity.roles import Role
from tests import environment
from tests.factories import agent_client, make_user, mark_classified, user_client

pytestmark = pytest.mark.usefixtures("services")
SHINGLE = 8

QUERIES = {
    "plain column": "SELECT ssn FROM patients LIMIT 20",
    "alias": "SELECT ssn AS x FROM patients LIMIT 20",
    "cast to text": "SELECT ssn::text FROM patients LIMIT 20",
    "CAST varchar": "SELECT CAST(ssn AS varchar(20)) FROM patients LIMIT 20",
    "concat operator": "SELECT phone || '' FROM patients LIMIT 20",
    "concat()": "SELECT concat(full_name, '') FROM patients LIMIT 20",
    "upper()": "SELECT upper(full_name) FROM patients LIMIT 20",
    "lower() email": "SELECT lower(email) FROM patients LIMIT 20",
    "substr whole": "SELECT substr(ssn, 1, 11) FROM patients LIMIT 20",
    "reverse": "SELECT reverse(ssn) FROM patients LIMIT 20",
    "replace": "SELECT replace(ssn, '-', '') FROM patients LIMIT 20",
    "CASE": "SELECT CASE WHEN id > 0 THEN ssn END FROM patients LIMIT 20",
    "COALESCE": "SELECT coalesce(email, 'none') FROM patients LIMIT 20",
    "scalar subquery": "SELECT (SELECT ssn FROM patients p2 WHERE p2.id = p.id) FROM patients p LIMIT 20",
    "FROM subquery": "SELECT s FROM (SELECT ssn AS s FROM patients) sub LIMIT 20",
    "CTE": "WITH c AS (SELECT full_name FROM patients) SELECT * FROM c LIMIT 20",
    "recursive CTE": (
        "WITH RECURSIVE r(n, name) AS (SELECT 1, full_name FROM patients WHERE id = 1 "
        "UNION ALL SELECT n + 1, name FROM r WHERE n < 3) SELECT * FROM r"
    ),
    "UNION with non-PHI": "SELECT code FROM diagnosis_codes UNION ALL SELECT ssn FROM patients LIMIT 80",
    "INTERSECT": "SELECT full_name FROM patients INTERSECT SELECT full_name FROM patients LIMIT 20",
    "EXCEPT": "SELECT email FROM patients EXCEPT SELECT 'x' LIMIT 20",
    "SELECT *": "SELECT * FROM patients LIMIT 20",
    "t.*": "SELECT p.* FROM patients p LIMIT 20",
    "whole row": "SELECT p FROM patients p LIMIT 20",
    "row_to_json": "SELECT row_to_json(p) FROM patients p LIMIT 20",
    "to_jsonb": "SELECT to_jsonb(p) FROM patients p LIMIT 20",
    "json_agg": "SELECT json_agg(p) FROM (SELECT * FROM patients LIMIT 5) p",
    "array_agg": "SELECT array_agg(ssn) FROM patients",
    "string_agg": "SELECT string_agg(full_name, ',') FROM patients",
    "min/max": "SELECT max(ssn), min(full_name) FROM patients",
    "row constructor": "SELECT ROW(ssn, phone) FROM patients LIMIT 20",
    "json_build_object": "SELECT json_build_object('s', ssn) FROM patients LIMIT 20",
    "LATERAL": "SELECT x.* FROM patients p, LATERAL (SELECT p.ssn) x LIMIT 20",
    "free-text notes": "SELECT notes FROM encounters LIMIT 20",
    "substring of notes": "SELECT substr(notes, 1, 40) FROM encounters LIMIT 20",
    "join": "SELECT e.notes, p.full_name FROM encounters e JOIN patients p ON p.id = e.patient_id LIMIT 20",
    "format()": "SELECT format('%s', address) FROM patients LIMIT 20",
    "date as text": "SELECT date_of_birth::text FROM patients LIMIT 20",
    "to_char": "SELECT to_char(date_of_birth, 'YYYY-MM-DD') FROM patients LIMIT 20",
    "regexp_replace": "SELECT regexp_replace(phone, '[0-9]', 'X', 'g') FROM patients LIMIT 20",
    "COLLATE": 'SELECT full_name COLLATE "C" FROM patients LIMIT 20',
    "field selection": "SELECT (p).full_name FROM patients p LIMIT 20",
    "ARRAY(subquery)": "SELECT ARRAY(SELECT ssn FROM patients LIMIT 3)",
    "view": "SELECT * FROM bypass_contacts LIMIT 20",
    "view over view": "SELECT * FROM bypass_contacts_again LIMIT 20",
    "arithmetic beside PHI": "SELECT id + 1, mrn FROM patients LIMIT 20",
    "split_part": "SELECT split_part(full_name, ' ', 2) FROM patients LIMIT 20",
    "inference: WHERE LIKE": "SELECT count(*) FROM patients WHERE ssn LIKE '9%'",
    "inference: ORDER BY": "SELECT id FROM patients ORDER BY ssn LIMIT 20",
    "inference: GROUP BY": "SELECT count(*) FROM patients GROUP BY zip",
    "cast error echoes value": "SELECT full_name::int FROM patients LIMIT 1",
    "query_to_xml": "SELECT query_to_xml('SELECT ssn FROM patients', true, false, '')",
    "pg_stats": "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'patients'",
}
# Held through the ticket path (a volatile function makes each held); their results are checked too.
THROUGH_TICKETS = ["plain column", "row_to_json", "string_agg", "UNION with non-PHI", "CTE", "view", "SELECT *"]


@pytest.fixture(scope="module")
def secrets_and_views(target) -> set[str]:  # type: ignore[no-untyped-def]
    with psycopg.connect(target.owner_url) as conn:
        conn.execute("CREATE OR REPLACE VIEW bypass_contacts AS SELECT id, full_name AS name, phone FROM patients")
        conn.execute("CREATE OR REPLACE VIEW bypass_contacts_again AS SELECT * FROM bypass_contacts")
        for role in (environment.READ_ROLE, environment.WRITE_ROLE):
            conn.execute(f'GRANT SELECT ON bypass_contacts, bypass_contacts_again TO "{role}"')
        mark_classified("bypass_contacts", "bypass_contacts_again")  # agents may read them: a view is not a way out
        phi = conn.execute(
            "SELECT unnest(ARRAY[mrn, full_name, date_of_birth::text, ssn, phone, email, address]) FROM patients"
        ).fetchall()
        notes = conn.execute("SELECT notes FROM encounters").fetchall()
        public = conn.execute(
            "SELECT description FROM diagnosis_codes UNION ALL SELECT code FROM diagnosis_codes "
            "UNION ALL SELECT drug || ' ' || dose FROM prescriptions"
        ).fetchall()
        conn.commit()
    time.sleep(0.3)  # new views reach the gateway's catalog snapshot
    harmless = {s for (text,) in public for s in _shingles(text)}
    return {s for (text,) in [*phi, *notes] if text for s in _shingles(text)} - harmless


def _shingles(text: str | None) -> set[str]:
    if not text:
        return set()
    return {text[i : i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1))} if len(text) >= SHINGLE else set()


def _leaks(payload: object, secrets: set[str]) -> set[str]:
    text = str(payload)
    return {s for s in _shingles(text) if s in secrets}


@pytest.mark.parametrize("technique", list(QUERIES))
def test_no_phi_reaches_an_agent(secrets_and_views, technique: str) -> None:  # type: ignore[no-untyped-def]
    _, client = agent_client(make_user(Role.ENGINEER))
    response = client.post("/api/v1/queries", {"datasource": "clinic", "sql": QUERIES[technique]}, format="json")
    assert response.status_code in {200, 202, 400, 403}, response.content
    assert not _leaks(response.json(), secrets_and_views), f"{technique} leaked PHI"


def test_most_techniques_actually_run(secrets_and_views) -> None:  # type: ignore[no-untyped-def]
    """The suite proves masking only if the queries run: most must come back with rows (200)."""
    _, client = agent_client(make_user(Role.ENGINEER))
    codes = {
        name: client.post("/api/v1/queries", {"datasource": "clinic", "sql": sql}, format="json").status_code
        for name, sql in QUERIES.items()
    }
    ran = [name for name, code in codes.items() if code == 200]
    assert len(QUERIES) >= 40
    assert len(ran) >= 40, codes
    for name in ("inference: WHERE LIKE", "inference: ORDER BY", "inference: GROUP BY"):
        assert codes[name] == 202  # held by the inference guard
    assert codes["query_to_xml"] == 403 and codes["pg_stats"] == 403


@pytest.mark.parametrize("technique", THROUGH_TICKETS)
def test_no_phi_in_an_approved_tickets_result(secrets_and_views, technique: str) -> None:  # type: ignore[no-untyped-def]
    _, client = agent_client(make_user(Role.ENGINEER))
    sql = f"SELECT random() < 2 AS held, q.* FROM ({QUERIES[technique]}) q"  # volatile, so held
    response = client.post("/api/v1/queries", {"datasource": "clinic", "sql": sql}, format="json")
    assert response.status_code == 202, response.json()
    ticket = response.json()["ticket"]["id"]
    assert (
        user_client(make_user(Role.REVIEWER))
        .post(f"/api/v1/tickets/{ticket}/reviews", {"decision": "approve"}, format="json")
        .status_code
        == 201
    )
    deadline = time.monotonic() + 30
    status = "approved"
    while status not in {"executed", "failed"} and time.monotonic() < deadline:
        status = client.get(f"/api/v1/tickets/{ticket}/wait?timeout=5").json()["status"]
    assert status == "executed"
    result = client.get(f"/api/v1/tickets/{ticket}/result").json()
    assert result["rows"], result
    assert not _leaks(result, secrets_and_views), f"{technique} leaked PHI through an approved ticket"


def test_the_leak_detector_detects_leaks(secrets_and_views) -> None:  # type: ignore[no-untyped-def]
    """Control: reviewers see names unmasked by default policy, so the detector must fire for them."""
    reviewer = user_client(make_user(Role.REVIEWER))
    response = reviewer.post(
        "/api/v1/queries", {"datasource": "clinic", "sql": "SELECT full_name FROM patients LIMIT 5"}, format="json"
    )
    assert response.status_code == 200
    assert _leaks(response.json(), secrets_and_views)
