"""The extended protocol's fast path (issue 13): ``[Parse] Bind [Describe] Execute Sync`` answered from the socket
callbacks, as ORMs, drivers and JDBC send each statement, keeps every promise of the client loop.

A statement takes it once its decision is cached (its second run): each test runs its batch more than once and
reads the gateway's own counts (``GET /stats`` on the health port) to know which path answered. What must hold:
the answers equal PostgreSQL's own (non-PHI), masked rows equal the client loop's, errors end the batch as
PostgreSQL does, a message sent meanwhile waits its turn, and every statement has its records (parameters
included) and exactly one outcome.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from audit.models import AuditEvent, EventKind
from gateway.pgwire.backend import (
    BackendKeyData,
    CommandComplete,
    DataRow,
    EmptyQueryResponse,
    ErrorResponse,
    ParameterStatus,
    ReadyForQuery,
)
from gateway.pgwire.frontend import Bind, Describe, Execute, Parse, Query, Sync
from identity.roles import Role
from tests import services as svc
from tests.factories import make_agent, make_user
from tests.services import wait_until
from tests.wire_client import WireClient, rows

INT4 = 23
TEXT = 25
CODES = "SELECT code FROM diagnosis_codes WHERE code > $1 ORDER BY code LIMIT 3"
PATIENT = "SELECT id, ssn, full_name, date_of_birth FROM patients WHERE id = $1"


@pytest.fixture(scope="module")
def gateway(target, tmp_path_factory) -> Iterator[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """A gateway of this module's own, with its health port: its counts are this module's alone."""
    health_port = svc.free_port()
    service, port = svc.gateway(
        target.read_url,
        tmp_path_factory.mktemp("fast-batch"),
        name="fast-batch-gateway",
        # Decisions are cached per catalog snapshot: one that outlives these tests keeps which path answers
        # deterministic (the suite's one-second TTL would send a batch back to the client loop now and then).
        extra_env={"GATEWAY_HEALTH_PORT": str(health_port), "CATALOG_TTL_SECONDS": "60"},
    )
    svc.wait_until(lambda: svc.port_open(health_port), 30, what="the gateway's health port")
    yield port, health_port
    service.stop()


@pytest.fixture
def agent_login(gateway) -> tuple[Any, str]:  # type: ignore[no-untyped-def]
    return make_agent(make_user(Role.ENGINEER))


def _client(gateway: tuple[int, int], login: tuple[Any, str]) -> WireClient:
    agent, token = login
    return WireClient(gateway[0], agent.name, token)


def _direct(target: Any) -> WireClient:
    url = urlsplit(target.read_url)
    return WireClient(url.port or 5432, unquote(url.username or ""), unquote(url.password or ""), url.path[1:])


def _fast_batches(gateway: tuple[int, int]) -> int:
    stats = httpx.get(f"http://127.0.0.1:{gateway[1]}/stats", timeout=5).json()
    return int(stats["wire"]["fast_batches"])


def _batch(client: WireClient, *messages: Any) -> list[Any]:
    """A batch and its answers, then a moment: the fast path takes only what arrives while the session's client
    loop waits for bytes, which it does again shortly after it has answered a batch itself."""
    replies = client.batch(*messages)
    time.sleep(0.03)
    return replies


def _answers(replies: list[Any]) -> list[Any]:
    kept = [m for m in replies if not isinstance(m, ParameterStatus | BackendKeyData)]
    return [("Error", m.fields.get("C"), m.fields.get("M")) if isinstance(m, ErrorResponse) else m for m in kept]


def _codes_batches(after: str) -> list[list[Any]]:
    """The shapes drivers send: unnamed Parse + Describe (psycopg, libpq), a named statement's Bind and Execute
    without Describe (asyncpg, JDBC after a few runs), binary results."""
    text = (after.encode(),)
    return [
        [Parse("", CODES, (TEXT,)), Bind("", "", (0,), text, ()), Describe("P", ""), Execute("", 0)],
        [Bind("", "fb_codes", (0,), text, ()), Execute("", 0)],
        [Bind("", "fb_codes", (0,), text, (1,)), Describe("P", ""), Execute("", 0)],
        [Parse("", CODES, (TEXT,)), Bind("", "", (0,), text, ()), Execute("", 2)],  # suspended after 2 rows
    ]


def test_repeated_batches_take_the_fast_path_and_answer_like_postgresql(gateway, agent_login, target) -> None:  # type: ignore[no-untyped-def]
    before = _fast_batches(gateway)
    with _client(gateway, agent_login) as through, _direct(target) as direct:
        for client in (through, direct):
            client.batch(Parse("fb_codes", CODES, (TEXT,)))
        for after in ("A", "A", "B", "C"):  # the first run decides (client loop); the rest are cached
            for batch in _codes_batches(after):
                ours, theirs = _batch(through, *batch), direct.batch(*batch)
                assert _answers(ours) == _answers(theirs), batch
    assert _fast_batches(gateway) - before >= 3 * len(_codes_batches("A"))


def test_masked_rows_through_the_fast_path_equal_the_client_loops(gateway, agent_login) -> None:  # type: ignore[no-untyped-def]
    before = _fast_batches(gateway)
    batch = [Parse("", PATIENT, (INT4,)), Bind("", "", (0,), (b"3",), ()), Describe("P", ""), Execute("", 0)]
    with _client(gateway, agent_login) as client:
        first = _batch(client, *batch)  # decided now: the client loop
        again = [_batch(client, *batch) for _ in range(3)]  # cached: the fast path
    assert _fast_batches(gateway) - before == 3
    assert rows(first) and all(rows(answer) == rows(first) for answer in again)
    masked_ssn = rows(first)[0][1]
    assert masked_ssn is not None and not masked_ssn[:3].isdigit(), "the SSN must be masked on both paths"


def test_an_error_in_a_fast_batch_ends_it_like_postgresql_and_is_recorded(gateway, agent_login, target) -> None:  # type: ignore[no-untyped-def]
    divide = "SELECT 10 / $1::int AS ratio"
    batch = [Parse("", divide, (INT4,)), Bind("", "", (0,), (b"5",), ()), Describe("P", ""), Execute("", 0)]
    failing = [Parse("", divide, (INT4,)), Bind("", "", (0,), (b"0",), ()), Describe("P", ""), Execute("", 0)]
    agent, _ = agent_login
    with _client(gateway, agent_login) as through, _direct(target) as direct:
        _batch(through, *batch)  # decided and cached
        before = _fast_batches(gateway)
        ours, theirs = _batch(through, *failing), direct.batch(*failing)
        assert _answers(ours) == _answers(theirs)
        assert [m.fields["C"] for m in ours if isinstance(m, ErrorResponse)] == ["22012"]
        assert rows(through.batch(*batch)) == [("2",)]  # the session goes on
        assert _fast_batches(gateway) - before == 2
    failed = wait_until(
        lambda: list(AuditEvent.objects.filter(agent=agent, kind=EventKind.QUERY_FAILED)) or None,
        15,
        what="the failure record",
    )
    assert [event.details.get("sqlstate") for event in failed] == ["22012"]


def test_every_fast_statement_has_its_parameters_on_record_and_one_outcome(gateway, agent_login) -> None:  # type: ignore[no-untyped-def]
    agent, _ = agent_login
    with _client(gateway, agent_login) as client:
        client.batch(Parse("fb_codes", CODES, (TEXT,)))
        for after in ("A", "B", "C", "D"):
            assert rows(client.batch(Bind("", "fb_codes", (0,), (after.encode(),), ()), Execute("", 0)))

    def records() -> list[AuditEvent] | None:
        events = list(AuditEvent.objects.filter(agent=agent).order_by("id"))
        executed = [e for e in events if e.kind == EventKind.QUERY_EXECUTED]
        return events if len(executed) >= 4 else None

    events = wait_until(records, 15, what="four executed records")
    time.sleep(0.3)  # anything late would be a second outcome
    events = list(AuditEvent.objects.filter(agent=agent).order_by("id"))
    submitted = [e for e in events if e.kind == EventKind.QUERY_SUBMITTED]
    assert [e.details["params"] for e in submitted] == [["A"], ["B"], ["C"], ["D"]]
    links = [e.details["statement_id"] for e in submitted]
    assert len(set(links)) == 4
    outcomes = [e for e in events if e.kind in (EventKind.QUERY_EXECUTED, EventKind.QUERY_FAILED)]
    assert sorted(e.details["statement_id"] for e in outcomes) == sorted(links)
    assert all(e.kind == EventKind.QUERY_EXECUTED and e.details["rowcount"] == 3 for e in outcomes)


def test_a_message_sent_while_a_fast_batch_runs_waits_its_turn(gateway, agent_login) -> None:  # type: ignore[no-untyped-def]
    slow = "SELECT count(*) FROM generate_series(1, $1::int)"  # a few hundred milliseconds upstream
    batch = [Parse("", slow, (INT4,)), Bind("", "", (0,), (b"3000000",), ()), Execute("", 0)]
    with _client(gateway, agent_login) as client:
        _batch(client, *batch)  # cached from now on
        before = _fast_batches(gateway)
        for _ in range(2):
            time.sleep(0.03)  # the client loop, which answered the Query, waits for bytes again
            client.send(*batch, Sync())
            time.sleep(0.05)  # read alone by the gateway: the fast path
            client.send(Query(""))  # arrives while the batch runs: the client loop
            replies = client.read_until_ready()
            replies += client.read_until_ready()
            kinds = [type(m).__name__ for m in replies if not isinstance(m, ParameterStatus)]
            assert kinds == [
                "ParseComplete",
                "BindComplete",
                "DataRow",
                "CommandComplete",
                "ReadyForQuery",
                "EmptyQueryResponse",
                "ReadyForQuery",
            ]
            assert isinstance(replies[-2], EmptyQueryResponse) and isinstance(replies[-1], ReadyForQuery)
            assert [m.tag for m in replies if isinstance(m, CommandComplete)] == ["SELECT 1"]
            assert rows([m for m in replies if isinstance(m, DataRow)]) == [("3000000",)]
        assert _fast_batches(gateway) - before == 2
