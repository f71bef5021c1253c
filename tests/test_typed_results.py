"""Typed JSON in results (policy.result_values), table-driven over the common PostgreSQL types.

Through the real web process (uvicorn) and the real gateway: ``POST /api/v1/queries`` answers numbers, booleans,
nulls, parsed JSON documents and arrays for unmasked columns, strings for everything else, and always strings
for masked columns (a mask of an integer column is never a number). The ticket result API (an agent polling an
executed ticket) types values by the same rule, from what the executor stored.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from identity.models import ApiToken
from identity.roles import Role
from policy.models import DataSource, PhiColumn, PhiType
from policy.result_values import ValueType, parse_array
from tests import environment
from tests.factories import make_agent, make_user, mark_classified

pytestmark = pytest.mark.usefixtures("services")

TABLE = "typed_values"
ANY_PSEUDONYM = re.compile(r"^[a-z_]+_[0-9a-f]{16}$")


@dataclass(frozen=True)
class Case:
    """One column: its SQL type, the literal stored in rows 1 and 2 (row 3 is all NULL), the JSON expected for
    them, and the type name and JSON kind ``column_types`` must report. ``phi`` tags the column (masked)."""

    column: str
    sql_type: str
    first: str
    second: str
    first_json: Any
    second_json: Any
    type_name: str
    kind: str
    phi: PhiType | None = None
    mask: str | None = None


CASES = [
    Case("small", "smallint", "-7", "32767", -7, 32767, "smallint", "number"),
    Case("whole", "integer", "42", "-2147483648", 42, -2147483648, "integer", "number"),
    Case("big", "bigint", "9007199254740993", "-9223372036854775808", 9007199254740993, -(2**63), "bigint", "number"),
    Case(
        "exact",
        "numeric",
        "12345678901234567890.000000000000000001",
        "'NaN'",
        "12345678901234567890.000000000000000001",
        "NaN",
        "numeric",
        "string",
    ),
    Case("price", "numeric(10,2)", "19.9", "0", "19.90", "0.00", "numeric", "string"),
    Case("single", "real", "1.5", "'Infinity'", 1.5, "Infinity", "real", "number"),
    Case("double", "double precision", "0.1", "'NaN'", 0.1, "NaN", "double precision", "number"),
    Case("flag", "boolean", "true", "false", True, False, "boolean", "boolean"),
    Case(
        "doc",
        "json",
        """'{"b": [1, 2.5, null], "a": "x"}'""",
        """'"just text"'""",
        {"b": [1, 2.5, None], "a": "x"},
        "just text",
        "json",
        "json",
    ),
    Case(
        "docb",
        "jsonb",
        """'{"n": 1, "t": true}'""",
        """'[1, {"k": null}]'""",
        {"n": 1, "t": True},
        [1, {"k": None}],
        "jsonb",
        "json",
    ),
    Case("ints", "integer[]", "'{1,NULL,3}'", "'{}'", [1, None, 3], [], "integer[]", "array"),
    Case("grid", "bigint[]", "'{{1,2},{3,4}}'", "'[0:1]={5,6}'", [[1, 2], [3, 4]], [5, 6], "bigint[]", "array"),
    Case(
        "words",
        "text[]",
        """'{"a b","NULL",NULL,"q\\"uote","back\\\\slash"}'""",
        "'{}'",
        ["a b", "NULL", None, 'q"uote', "back\\slash"],
        [],
        "text[]",
        "array",
    ),
    Case("flags", "boolean[]", "'{t,f,NULL}'", "'{}'", [True, False, None], [], "boolean[]", "array"),
    Case(
        "docs",
        "jsonb[]",
        """ARRAY['{"a": 1}'::jsonb, '[true]'::jsonb]""",
        "'{}'",
        [{"a": 1}, [True]],
        [],
        "jsonb[]",
        "array",
    ),
    Case("amounts", "numeric[]", "'{1.10,2}'", "'{}'", ["1.10", "2"], [], "numeric[]", "array"),
    Case("moods", "typed_mood[]", "'{happy,sad}'", "'{}'", ["happy", "sad"], [], "typed_mood[]", "array"),
    Case("counts", "typed_count[]", "'{1,2}'", "'{}'", [1, 2], [], "typed_count[]", "array"),
    Case(
        "boxes",
        "box[]",
        "ARRAY['((1,1),(0,0))'::box, '((3,3),(2,2))'::box]",
        "'{}'",
        ["(1,1),(0,0)", "(3,3),(2,2)"],
        [],
        "box[]",
        "array",
    ),
    Case("mood", "typed_mood", "'happy'", "'sad'", "happy", "sad", "typed_mood", "string"),
    Case("tally", "typed_count", "5", "0", 5, 0, "integer", "number"),  # a domain is sent as its base type
    Case("day", "date", "'2024-02-29'", "'infinity'", "2024-02-29", "infinity", "date", "string"),
    Case(
        "moment",
        "timestamp",
        "'2024-02-29 12:34:56.789'",
        "'-infinity'",
        "2024-02-29 12:34:56.789",
        "-infinity",
        "timestamp without time zone",
        "string",
    ),
    Case("span", "interval", "'1 day 02:03:04'", "'0'", "1 day 02:03:04", "00:00:00", "interval", "string"),
    Case(
        "uid",
        "uuid",
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        "'00000000-0000-0000-0000-000000000000'",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "00000000-0000-0000-0000-000000000000",
        "uuid",
        "string",
    ),
    Case("blob", "bytea", "'\\xdeadbeef'", "''", "\\xdeadbeef", "\\x", "bytea", "string"),
    Case("stretch", "int4range", "'[1,5)'", "'empty'", "[1,5)", "empty", "int4range", "string"),
    Case("label", "text", "'héllo'", "''", "héllo", "", "text", "string"),
    Case("code", "character varying(8)", "'A1'", "'0042'", "A1", "0042", "character varying", "string"),
    # Masked columns: always strings (or NULL where the mask shows NULL), whatever the column's type.
    Case(
        "account_no",
        "bigint",
        "1234567",
        "7",
        ANY_PSEUDONYM,
        ANY_PSEUDONYM,
        "bigint",
        "string",
        PhiType.ACCOUNT,
        "hash",
    ),
    Case(
        "ssn_digits", "bigint", "123456789", "42", "***6789", "[redacted]", "bigint", "string", PhiType.SSN, "partial"
    ),
    Case(
        "visit_day",
        "date",
        "'2024-02-29'",
        "'1999-12-31'",
        "2024",
        "1999",
        "date",
        "string",
        PhiType.SERVICE_DATE,
        "generalize",
    ),
    Case("zip_int", "integer", "90210", "12", "90200", "[redacted]", "integer", "string", PhiType.ZIP, "generalize"),
    Case(
        "vip",
        "boolean",
        "true",
        "false",
        "[redacted]",
        "[redacted]",
        "boolean",
        "string",
        PhiType.CLINICAL_NOTES,
        "redact",
    ),
    Case("photo", "bytea", "'\\x0102'", "'\\x03'", None, None, "bytea", "string", PhiType.PHOTO, "null"),
    Case(
        "device_ids",
        "integer[]",
        "'{1,2}'",
        "'{3}'",
        ANY_PSEUDONYM,
        ANY_PSEUDONYM,
        "integer[]",
        "string",
        PhiType.DEVICE,
        "hash",
    ),
    Case(
        "notes_doc",
        "jsonb",
        """'{"n": 1}'""",
        "'2'",
        "[redacted]",
        "[redacted]",
        "jsonb",
        "string",
        PhiType.CLINICAL_NOTES,
        "redact",
    ),
]


@pytest.fixture(scope="module")
def typed_table(services: Any) -> Iterator[str]:
    columns = ", ".join(f"{case.column} {case.sql_type}" for case in CASES)
    with psycopg.connect(services.target.owner_url, autocommit=True) as conn:
        conn.execute("CREATE TYPE typed_mood AS ENUM ('happy', 'sad')")
        conn.execute("CREATE DOMAIN typed_count AS integer CHECK (VALUE >= 0)")
        conn.execute(f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, {columns})")
        for row_id, attribute in ((1, "first"), (2, "second")):
            values = ", ".join(getattr(case, attribute) for case in CASES)
            conn.execute(f"INSERT INTO {TABLE} VALUES ({row_id}, {values})")
        conn.execute(f"INSERT INTO {TABLE} (id) VALUES (3)")
        conn.execute(f'GRANT SELECT ON {TABLE} TO "{environment.READ_ROLE}"')
        conn.execute(f'GRANT SELECT ON {TABLE} TO "{environment.WRITE_ROLE}"')
    datasource = DataSource.objects.get(name=environment.DATASOURCE)
    for case in CASES:
        if case.phi is not None:
            PhiColumn.objects.create(
                datasource=datasource,
                schema_name="public",
                table_name=TABLE,
                column_name=case.column,
                phi_type=case.phi,
            )
    mark_classified(TABLE)
    time.sleep(1.5)  # the gateway's catalog snapshot (CATALOG_TTL_SECONDS=1 in tests) sees the new table and tags
    yield TABLE
    PhiColumn.objects.filter(table_name=TABLE).delete()
    with psycopg.connect(services.target.owner_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {TABLE}")
        conn.execute("DROP DOMAIN typed_count")
        conn.execute("DROP TYPE typed_mood")


def agent_token() -> str:
    _, token = make_agent(make_user(Role.ENGINEER))
    return token


def post_query(web_url: str, token: str, sql: str) -> httpx.Response:
    return httpx.post(
        f"{web_url}/api/v1/queries",
        json={"datasource": "clinic", "sql": sql, "reason": "typed results"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def matches(expected: Any, got: Any) -> bool:
    """Equal, and of the same JSON type (``True == 1`` and ``1 == 1.0`` in Python; not in JSON)."""
    if isinstance(expected, re.Pattern):
        return isinstance(got, str) and expected.match(got) is not None
    if type(expected) is not type(got):
        return False
    if isinstance(expected, list):
        return len(expected) == len(got) and all(matches(e, g) for e, g in zip(expected, got, strict=True))
    if isinstance(expected, dict):
        return expected.keys() == got.keys() and all(matches(expected[k], got[k]) for k in expected)
    return bool(expected == got)


def check_result(body: dict[str, Any], cases: list[Case]) -> None:
    assert body["columns"] == ["id", *(case.column for case in cases)]
    described = body["column_types"]
    assert described[0] == {"name": "id", "type": "integer", "oid": 23, "json": "number", "mask": None}
    for case, entry in zip(cases, described[1:], strict=True):
        assert entry["name"] == case.column
        assert (entry["type"], entry["json"], entry["mask"]) == (case.type_name, case.kind, case.mask), entry
        assert isinstance(entry["oid"], int) and entry["oid"] > 0
        if case.kind == "array":
            assert entry["element"]["type"] == case.type_name.removesuffix("[]") or case.column == "counts"
        else:
            assert "element" not in entry
    rows = body["rows"]
    assert [row[0] for row in rows] == [1, 2, 3]
    for index, case in enumerate(cases, start=1):
        for row, expected in ((rows[0], case.first_json), (rows[1], case.second_json), (rows[2], None)):
            assert matches(expected, row[index]), (case.column, row[0], expected, row[index])


def test_every_common_type_over_http(web: Any, typed_table: str) -> None:
    response = post_query(web.url, agent_token(), f"SELECT * FROM {typed_table} ORDER BY id")
    assert response.status_code == 200, response.text
    body = response.json()
    check_result(body, CASES)
    # The bigint beyond 2^53 is exact in the JSON text itself, not rounded to a double.
    assert '"rows":[[1,-7,42,9007199254740993,' in response.text.replace(" ", "")


def test_masked_values_are_strings_whatever_they_look_like(web: Any, typed_table: str) -> None:
    """A generalized year, a partial of an integer and a ZIP prefix look like numbers: they stay strings, so the
    JSON type of a masked value never depends on the value (the redacted second row is a string too)."""
    token = agent_token()
    response = post_query(
        web.url, token, f"SELECT id, visit_day, ssn_digits, zip_int, vip FROM {typed_table} ORDER BY id"
    )
    assert response.status_code == 200, response.text
    rows = response.json()["rows"]
    assert rows == [
        [1, "2024", "***6789", "90200", "[redacted]"],
        [2, "1999", "[redacted]", "[redacted]", "[redacted]"],
        [3, None, None, None, None],  # NULL stays NULL under every mask, exactly as before typing
    ]
    assert all(isinstance(value, str) for row in rows[:2] for value in row[1:])


def test_computed_values_are_typed_by_their_result_type(web: Any) -> None:
    response = post_query(
        web.url,
        agent_token(),
        "SELECT count(*) AS n, 1 + 1 AS two, 2.50::numeric AS exact, 0.5::float8 AS half, 1 < 2 AS yes, "
        "NULL::int AS nothing, '{\"k\": [1]}'::jsonb AS doc, ARRAY[1, 2] AS pair, 'x'::text AS word, "
        "'infinity'::float8 AS huge",
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rows"] == [[1, 2, "2.50", 0.5, True, None, {"k": [1]}, [1, 2], "x", "Infinity"]]
    assert [column["json"] for column in body["column_types"]] == [
        "number", "number", "string", "number", "boolean", "number", "json", "array", "string", "number",
    ]  # fmt: skip


def test_count_over_a_phi_table_is_a_number(web: Any) -> None:
    """The issue's example: a count came back as ["10000"]."""
    response = post_query(web.url, agent_token(), "SELECT count(*) FROM patients")
    assert response.status_code == 200, response.text
    [[count]] = response.json()["rows"]
    assert isinstance(count, int) and count > 0


def test_executed_ticket_result_is_typed_and_masked(web: Any, typed_table: str) -> None:
    """An agent's read held for approval (it filters on a PHI column), approved, run by the worker: the result
    API gives the same JSON as an immediate read would."""
    token = agent_token()
    headers = {"Authorization": f"Bearer {token}"}
    _, reviewer_token = ApiToken.issue(user=make_user(Role.REVIEWER))
    held = post_query(web.url, token, f"SELECT * FROM {typed_table} WHERE ssn_digits IS NOT NULL OR true ORDER BY id")
    assert held.status_code == 202, held.text
    ticket = held.json()["ticket"]["id"]
    early = httpx.get(f"{web.url}/api/v1/tickets/{ticket}/result", headers=headers, timeout=30)
    assert early.status_code == 409
    review = httpx.post(
        f"{web.url}/api/v1/tickets/{ticket}/reviews",
        json={"decision": "approve", "comment": "typed"},
        headers={"Authorization": f"Bearer {reviewer_token}"},
        timeout=30,
    )
    assert review.status_code == 201, review.text
    deadline = time.monotonic() + 60
    status = "pending"
    while status not in {"executed", "failed"} and time.monotonic() < deadline:
        status = httpx.get(f"{web.url}/api/v1/tickets/{ticket}/wait?timeout=5", headers=headers, timeout=30).json()[
            "status"
        ]
    assert status == "executed"
    result = httpx.get(f"{web.url}/api/v1/tickets/{ticket}/result", headers=headers, timeout=30)
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["rowcount"] == 3
    check_result(body, CASES)


@pytest.mark.parametrize(
    ("text", "delimiter", "parsed"),
    [
        ("{}", ",", []),
        ('{1,NULL,"NULL"}', ",", ["1", None, "NULL"]),
        ('{"a\\\\b","c\\"d",""}', ",", ["a\\b", 'c"d', ""]),
        ("{{1,2},{3,4}}", ",", [["1", "2"], ["3", "4"]]),
        ("[-1:0][1:1]={{1},{2}}", ",", [["1"], ["2"]]),
        ("{(1,1),(0,0);(2,2),(1,1)}", ";", ["(1,1),(0,0)", "(2,2),(1,1)"]),
    ],
)
def test_array_text_parses(text: str, delimiter: str, parsed: list[Any]) -> None:
    assert parse_array(text, delimiter) == parsed


@pytest.mark.parametrize("text", ["", "{", "{1,2", "{1}x", "[1:2]", "{1,2}}", '{"open}'])
def test_malformed_array_text_stays_text(text: str) -> None:
    with pytest.raises(ValueError):
        parse_array(text)
    assert ValueType(1007, "integer[]", ValueType(23, "integer")).to_json(text) == text


def test_json_with_an_unpaired_surrogate_escape_stays_text_unit() -> None:
    document = ValueType(114, "json")
    assert document.to_json('"\\ud800"') == '"\\ud800"'
    assert document.to_json('"\\ud83d\\ude00"') == "\N{GRINNING FACE}"
    assert document.to_json('"\\\\ud800"') == "\\ud800"  # an escaped backslash, then letters


def test_json_too_deep_stays_text() -> None:
    deep = "[" * 300 + "]" * 300
    assert ValueType(3802, "jsonb").to_json(deep) == deep
    assert ValueType(3802, "jsonb").to_json("[[1]]") == [[1]]


def test_json_with_an_unpaired_surrogate_stays_text(web: Any) -> None:
    """PostgreSQL's json type keeps "\\ud800" as written; parsed, it is a string no UTF-8 encoder takes, so the
    document stays its text instead of breaking the answer. A proper pair still parses."""
    response = post_query(
        web.url, agent_token(), """SELECT '"\\ud800"'::json AS lone, '["\\ud83d\\ude00"]'::json AS pair"""
    )
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [['"\\ud800"', ["\N{GRINNING FACE}"]]]


def test_openapi_documents_typed_values() -> None:
    from rest_framework.test import APIClient

    schema = yaml.safe_load(APIClient().get("/api/schema/").content)
    components = schema["components"]["schemas"]
    for name in ("TypedResult", "QueryAnswer"):
        properties = components[name]["properties"]
        assert "column_types" in properties
        assert "always strings" in properties["rows"]["description"]
    column = components["ColumnType"]["properties"]
    assert {"name", "type", "oid", "json", "mask", "element"} <= set(column)
    assert "/api/v1/tickets/{ticket_id}/result" in schema["paths"]
    answer = schema["paths"]["/api/v1/tickets/{ticket_id}/result"]["get"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/TypedResult")
