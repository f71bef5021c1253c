"""The book against real PostgreSQL: random sequences of named objects, through the gateway and directly, in step.

``pg_prepared_statements`` and ``pg_cursors`` are denied to agents by policy (they expose statement texts with
their literals), and they cannot be read for the gateway's upstream session from another connection. So each
random sequence runs twice, in lockstep: through the gateway (signed in as an agent) and on a direct
connection to the target as the gateway's read role, the same connection the gateway opens. After each settled
batch the two answers must agree (the direct session's ``pg_prepared_statements``/``pg_cursors`` are read only
to report a difference: reading them is a simple Query, which would change the unnamed statement and portal of
one session only):

* every statement the gateway lets run returns what PostgreSQL returns for the same name (the texts return
  distinct values, so running another text under a name shows);
* a name PostgreSQL does not have gets PostgreSQL's SQLSTATE from the gateway (26000, 34000);
* the only difference allowed is the gateway refusing, with 26000/34000, a name the server still holds (fail
  closed: the book's documented early removals). The sessions then differ, so the example stops there.

Known session bugs (tests/test_wire_differential.py, ``KNOWN``) are kept out of the way: no text the gateway's
parser refuses is generated (a refused Parse or Query leaves the unnamed statement PostgreSQL would drop), and an
Execute in a failed block whose 25P02 the gateway does not show stops the example.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.pgwire.backend import (
    BackendKeyData,
    BackendMessage,
    DataRow,
    ErrorResponse,
    NoticeResponse,
    ParameterStatus,
    ReadyForQuery,
)
from gateway.pgwire.frontend import Bind, Close, Describe, Execute, Parse
from tests.test_wire_protocol_edges import agent  # noqa: F401  (fixture)
from tests.wire_client import WireClient, rows

TEXTS = [
    "SELECT 'a' AS v",
    "SELECT 'b' AS v",
    "SELECT 1/0",
    "SELECT id, label FROM scratch WHERE id <= 2 ORDER BY id",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT sp",
    "ROLLBACK TO SAVEPOINT sp",
    "DECLARE c1 CURSOR FOR SELECT id FROM scratch ORDER BY id",
    "DECLARE c1 CURSOR WITH HOLD FOR SELECT 'h' AS v",
    "DECLARE c2 CURSOR WITH HOLD FOR SELECT 'k' AS v",
    "CLOSE c1",
    "CLOSE ALL",
    "DEALLOCATE s1",
    "DEALLOCATE ALL",
    "DISCARD ALL",
    "FETCH 1 FROM c1",
    "FETCH 1 FROM c2",
]
STATEMENTS = ["", "s1", "s2"]
PORTALS = ["", "p1", "c1", "c2"]
UNKNOWN_NAME = frozenset({"26000", "34000"})

message = st.one_of(
    st.builds(Parse, st.sampled_from(STATEMENTS), st.sampled_from(TEXTS)),
    st.builds(Bind, st.sampled_from(PORTALS[:3]), st.sampled_from([*STATEMENTS, "s3"])),
    st.builds(Execute, st.sampled_from(PORTALS), st.just(0)),
    st.builds(Execute, st.sampled_from(PORTALS), st.just(0)),
    st.builds(Describe, st.sampled_from(["S", "P"]), st.sampled_from(PORTALS + STATEMENTS[1:])),
    st.builds(Close, st.sampled_from(["S", "P"]), st.sampled_from(PORTALS + STATEMENTS[1:])),
)
step = st.one_of(
    st.tuples(st.just("q"), st.sampled_from(TEXTS)),
    st.tuples(st.just("b"), st.lists(message, min_size=1, max_size=5)),
    # the usual driver pattern, to reach cursors and transaction blocks
    st.tuples(
        st.just("b"),
        st.builds(
            lambda name, portal, sql: [Parse(name, sql), Bind(portal, name), Execute(portal, 0)],
            st.sampled_from(STATEMENTS),
            st.sampled_from(PORTALS[:2]),
            st.sampled_from(TEXTS),
        ),
    ),
)


def shape(messages: list[BackendMessage]) -> list[Any]:
    """What must agree: every message, errors and notices by SQLSTATE (messages of the gateway's own refusals
    differ in wording for the unnamed statement, and source fields always)."""
    out: list[Any] = []
    for m in messages:
        if isinstance(m, ParameterStatus | BackendKeyData):
            continue
        if isinstance(m, ErrorResponse | NoticeResponse):
            out.append((type(m).__name__, m.fields.get("C")))
        else:
            out.append(m)
    return out


def server_names(direct: WireClient) -> tuple[dict[str, str], dict[str, str]]:
    statements = dict(rows(direct.query("SELECT name, statement FROM pg_prepared_statements")))  # type: ignore[arg-type]
    cursors = dict(rows(direct.query("SELECT name, statement FROM pg_cursors")))  # type: ignore[arg-type]
    return statements, cursors  # type: ignore[return-value]


def read_url(services) -> tuple[int, str, str, str]:  # type: ignore[no-untyped-def]
    url = urlsplit(services.target.read_url)
    assert url.port is not None and url.username is not None
    return url.port, url.username, unquote(url.password or ""), url.path.lstrip("/")


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=1, max_size=10))
def test_gateway_follows_postgresql_names(services, agent, steps: list[tuple[str, Any]]) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    port, user, password, database = read_url(services)
    trail: list[str] = []
    with (
        WireClient(agent["port"], agent["agent"].name, agent["token"]) as gateway,
        WireClient(port, user, password, database) as direct,
    ):
        for kind, what in steps:
            trail.append(f"{kind} {what}")
            if kind == "q":
                want, got = direct.query(what), gateway.query(what)
            else:
                want, got = direct.batch(*what), gateway.batch(*what)
            expected, actual = shape(want), shape(got)
            if expected == actual:
                continue
            index = next(
                (i for i, (e, a) in enumerate(zip(expected, actual, strict=False)) if e != a),
                min(len(expected), len(actual)),
            )
            have = actual[index] if index < len(actual) else None
            wanted = expected[index] if index < len(expected) else None
            if isinstance(have, tuple) and have[0] == "ErrorResponse" and have[1] in UNKNOWN_NAME:
                # Fail closed: the gateway refused a name the server still holds. Only where the book removes
                # early; the server must indeed have a name of that kind (else the SQLSTATEs would agree).
                return
            if wanted == ("ErrorResponse", "25P02") and isinstance(have, ReadyForQuery) and have.status == "E":
                return  # the known bug (see the module docstring): not this module's subject
            names = server_names(direct) if not isinstance(want[-1], ReadyForQuery) or want[-1].status != "E" else {}
            raise AssertionError(
                "the gateway's answer differs from PostgreSQL's\n"
                + "\n".join(trail)
                + f"\n  PostgreSQL: {expected}\n  gateway:    {actual}\n  server names: {names}\n"
                + f"  rows: {[m for m in got if isinstance(m, DataRow)]}"
            )
