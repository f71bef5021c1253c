"""Every statement has exactly one outcome record, on every front, in one vocabulary (invariant 6, audit.events).

The same cases (a masked read, a read PostgreSQL fails mid-statement, a denied statement, a held one that is
cancelled, an approved write that runs and one that fails in the executor) go through the HTTP API, the wire's
simple protocol (the raw test client's Query), the wire's extended protocol (psycopg, named prepared
statements), MCP (streamable HTTP against the real web process) and EXPLAIN; the approved ones are run by the
real Celery worker. Then each statement's records are gathered by the one linking key and compared across the
fronts: the same kinds, the same outcome, the same fields, SQLSTATE and scrubbed message.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from approvals.models import Status, Ticket
from audit.events import LINK, OUTCOME_OF, STATEMENT_KINDS, Context, StatementOutcome, outcome_of, statement_key
from audit.models import AuditEvent, EventKind
from gateway.explain import ExplainRefused, explain_via_gateway
from gateway.pgwire.backend import DataRow, ErrorResponse
from gateway.pgwire.frontend import Query
from identity.models import Agent
from identity.principal import Principal
from identity.roles import Role
from tests.factories import api_client, make_agent, make_user, scratch_row, user_client
from tests.services import wait_until
from tests.test_mcp import http_session
from tests.wire_client import WireClient

pytestmark = pytest.mark.usefixtures("services")

READ = "SELECT id, ssn FROM patients ORDER BY id LIMIT 3"
# Fails on its first row, after the statement started: PostgreSQL's error mid-statement. It touches PHI, so
# the recorded message is the scrubbed one (SQLSTATE and class only).
FAILING_READ = "SELECT id, ssn, 1 / (id - id) AS boom FROM patients ORDER BY id LIMIT 3"
# EXPLAIN only plans: this one fails while planning (the constant is folded), with the same error.
FAILING_PLAN = "SELECT id, ssn, 1 / 0 AS boom FROM patients"
DENIED = "SELECT usename, passwd FROM pg_shadow"
CANCELLED = "DELETE FROM scratch WHERE id = {row}"
APPROVED = "UPDATE scratch SET label = 'one outcome' WHERE id = {row}"
APPROVED_FAILS = "UPDATE scratch SET label = (1 / (id - id))::text WHERE id = {row}"
DIVISION_BY_ZERO = "22012"
SCRUBBED = "22012: data exception (message withheld because the statement involves PHI)"
_TICKET = re.compile(r"ticket (\d+)")


# --- fronts: each runs one statement as an agent and says which ticket it opened, if any -------------------------


@dataclass
class Front:
    name: str
    agent: Agent
    token: str
    run: Callable[[str], int | None]


def _http(agent: Agent, token: str, port: int, web_url: str) -> Callable[[str], int | None]:
    client = api_client(token)

    def run(sql: str) -> int | None:
        response = client.post("/api/v1/queries", {"datasource": "clinic", "sql": sql, "reason": "t"}, format="json")
        return int(response.json()["ticket"]["id"]) if response.status_code == 202 else None

    return run


def _wire_simple(agent: Agent, token: str, port: int, web_url: str) -> Callable[[str], int | None]:
    def run(sql: str) -> int | None:
        with WireClient(port, agent.name, token) as client:
            for message in client.query(sql):
                if isinstance(message, ErrorResponse) and message.fields.get("C") == "HA001":
                    return _ticket_in(message.fields["M"])
        return None

    return run


def _wire_extended(agent: Agent, token: str, port: int, web_url: str) -> Callable[[str], int | None]:
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{port}/clinic"

    def run(sql: str) -> int | None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            try:
                conn.execute(sql, prepare=True).fetchall()  # Parse of a named statement, Bind, Execute, Sync
            except psycopg.Error as error:
                if error.diag.sqlstate == "HA001":
                    return _ticket_in(error.diag.message_primary or "")
        return None

    return run


def _mcp(agent: Agent, token: str, port: int, web_url: str) -> Callable[[str], int | None]:
    async def call(sql: str) -> dict[str, Any]:
        async with http_session(web_url, token) as session:
            result = await session.call_tool("query", {"datasource": "clinic", "sql": sql, "reason": "t"})
            return dict(result.structured_content or {})

    def run(sql: str) -> int | None:
        body = asyncio.run(call(sql))
        return int(body["ticket"]["id"]) if body.get("status") == "pending_approval" else None

    return run


def _explain(agent: Agent, token: str, port: int, web_url: str) -> Callable[[str], int | None]:
    principal = Principal(human=agent.owner, agent=agent)

    def run(sql: str) -> int | None:
        with contextlib.suppress(ExplainRefused):
            explain_via_gateway(principal, "clinic", FAILING_PLAN if sql == FAILING_READ else sql, context=WEB)
        return None

    return run


WEB = Context(front="web")
STATEMENT_FRONTS = {"http": _http, "wire-simple": _wire_simple, "wire-extended": _wire_extended, "mcp": _mcp}
FRONTS = {**STATEMENT_FRONTS, "explain": _explain}


def _ticket_in(message: str) -> int:
    found = _TICKET.search(message)
    assert found is not None, message
    return int(found.group(1))


# --- the records, by statement ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What must be the same on every front: the statement's record and its one outcome record."""

    statement_kind: str
    outcome_kind: str
    outcome: StatementOutcome | None
    outcome_column: str
    outcome_fields: tuple[str, ...]
    sqlstate: str
    error: str
    rowcount: int | None
    masking: str


def _events(agent: Agent) -> list[AuditEvent]:
    tickets = list(Ticket.objects.filter(agent=agent).values_list("pk", flat=True))
    mine = AuditEvent.objects.filter(agent=agent) | AuditEvent.objects.filter(ticket_id__in=tickets)
    return list(mine.order_by("id"))


def _by_statement(agent: Agent) -> dict[str, list[AuditEvent]]:
    """The agent's statement records and outcome records, grouped by the one linking key."""
    groups: dict[str, list[AuditEvent]] = defaultdict(list)
    for event in _events(agent):
        if event.kind in STATEMENT_KINDS or event.kind in OUTCOME_OF:
            key = statement_key(event.pk, event.kind, event.details)
            assert key, f"{event.kind} without {LINK}: {event.details}"
            groups[key].append(event)
    return groups


def _shape(records: list[AuditEvent]) -> Shape:
    outcomes = [event for event in records if event.kind in OUTCOME_OF]
    statements = [event for event in records if event.kind in STATEMENT_KINDS]
    assert len(outcomes) <= 1, [(event.kind, event.details) for event in records]
    assert len(statements) <= 1, [(event.kind, event.details) for event in records]
    first = statements[0] if statements else outcomes[0]  # a refusal is its own statement record
    last = outcomes[0] if outcomes else None
    details = last.details if last else {}
    return Shape(
        statement_kind=first.kind,
        outcome_kind=last.kind if last else "",
        outcome=outcome_of(last.kind) if last else None,
        outcome_column=last.outcome if last else "",
        outcome_fields=tuple(sorted(details)),
        sqlstate=str(details.get("sqlstate", "")),
        error=str(details.get("error", "")),
        rowcount=details.get("rowcount"),
        masking=str(details.get("masking", "")),
    )


def _settled(agent: Agent, statements: int) -> dict[str, list[AuditEvent]]:
    """Wait for the agent's statements to have their records (the wire's travel through the journal)."""

    def complete() -> dict[str, list[AuditEvent]] | None:
        groups = _by_statement(agent)
        finished = [records for records in groups.values() if any(e.kind in OUTCOME_OF for e in records)]
        return groups if len(groups) >= statements and len(finished) >= statements else None

    try:
        return wait_until(complete, 30, interval=0.2, what=f"{statements} statements with their outcome records")
    except AssertionError as error:
        seen = {
            key: [(event.kind, event.summary) for event in records] for key, records in _by_statement(agent).items()
        }
        raise AssertionError(f"{error}; recorded: {seen}") from None


def _approve(ticket_id: int) -> None:
    reviewer = user_client(make_user(Role.REVIEWER))
    response = reviewer.post(f"/api/v1/tickets/{ticket_id}/reviews", {"decision": "approve"}, format="json")
    assert response.status_code == 201, response.json()


def _finished(ticket_id: int) -> str:
    def final() -> str | None:
        status = Ticket.objects.values_list("status", flat=True).get(pk=ticket_id)
        return str(status) if status in {Status.EXECUTED, Status.FAILED} else None

    return str(wait_until(final, 60, interval=0.2, what=f"ticket {ticket_id} to be executed"))


# --- the cases -------------------------------------------------------------------------------------------------


@dataclass
class Run:
    front: str
    agent: Agent
    shapes: dict[str, Shape]


def _run_front(name: str, services: Any, web_url: str) -> Run:
    """Every case through one front, as a new agent; the worker runs the approved ones."""
    agent, token = make_agent(make_user(Role.ENGINEER))
    run = FRONTS[name](agent, token, services.gateway_port, web_url)
    client = api_client(token)
    cases: dict[str, str] = {}  # case -> linking key
    for case, sql in (("read", READ), ("failing read", FAILING_READ), ("denied", DENIED)):
        assert run(sql) is None, (name, case)
        new = set(_settled(agent, len(cases) + 1)) - set(cases.values())
        assert len(new) == 1, (name, case, new)
        cases[case] = new.pop()
    if name in STATEMENT_FRONTS:
        cancelled = run(CANCELLED.format(row=scratch_row()))
        assert cancelled is not None
        assert client.post(f"/api/v1/tickets/{cancelled}/cancel").status_code == 200
        cases["cancelled ticket"] = f"ticket-{cancelled}"
        for case, sql in (("approved write", APPROVED), ("approved write fails", APPROVED_FAILS)):
            ticket = run(sql.format(row=scratch_row()))
            assert ticket is not None, (name, case)
            _approve(ticket)
            _finished(ticket)
            cases[case] = f"ticket-{ticket}"
    groups = _settled(agent, len(cases))
    return Run(name, agent, {case: _shape(groups[key]) for case, key in cases.items()})


@pytest.fixture(scope="module")
def runs(services, web) -> dict[str, Run]:  # type: ignore[no-untyped-def]
    """Every case through every front, once for the module."""
    return {name: _run_front(name, services, web.url) for name in FRONTS}


EXPECTED = {
    "read": (EventKind.QUERY_SUBMITTED, EventKind.QUERY_EXECUTED, StatementOutcome.EXECUTED),
    "failing read": (EventKind.QUERY_SUBMITTED, EventKind.QUERY_FAILED, StatementOutcome.FAILED),
    "denied": (EventKind.QUERY_DENIED, EventKind.QUERY_DENIED, StatementOutcome.REFUSED),
    "cancelled ticket": (EventKind.TICKET_CREATED, EventKind.TICKET_CANCELLED, StatementOutcome.CANCELLED),
    "approved write": (EventKind.TICKET_CREATED, EventKind.TICKET_EXECUTED, StatementOutcome.EXECUTED),
    "approved write fails": (EventKind.TICKET_CREATED, EventKind.TICKET_FAILED, StatementOutcome.FAILED),
}


@pytest.mark.parametrize("front", list(FRONTS))
def test_each_statement_has_exactly_one_outcome_record(runs: dict[str, Run], front: str) -> None:
    """Every statement the agent sent, whatever happened to it, has one statement record and one outcome."""
    run = runs[front]
    for key, records in _by_statement(run.agent).items():
        outcomes = [event.kind for event in records if event.kind in OUTCOME_OF]
        assert len(outcomes) == 1, (front, key, [event.kind for event in records])
    for case, shape in run.shapes.items():
        statement_kind, outcome_kind, outcome = EXPECTED[case]
        assert (shape.statement_kind, shape.outcome_kind, shape.outcome) == (statement_kind, outcome_kind, outcome), (
            front,
            case,
        )


def test_the_records_are_the_same_on_every_front(runs: dict[str, Run]) -> None:
    for case in EXPECTED:
        shapes = {front: run.shapes[case] for front, run in runs.items() if case in run.shapes}
        reference = shapes["http"]
        for front, shape in shapes.items():
            if front == "explain":  # its outcome is a plan, not the rows: same kinds and outcome, other fields
                assert (shape.statement_kind, shape.outcome_kind, shape.sqlstate, shape.error) == (
                    reference.statement_kind,
                    reference.outcome_kind,
                    reference.sqlstate,
                    reference.error,
                ), case
                continue
            assert shape == reference, (case, front, shape, reference)


def test_failures_carry_sqlstate_and_the_scrubbed_message(runs: dict[str, Run]) -> None:
    for front, run in runs.items():
        for case in ("failing read", "approved write fails"):
            if case in run.shapes:
                shape = run.shapes[case]
                assert (shape.sqlstate, shape.error) == (DIVISION_BY_ZERO, SCRUBBED), (front, case)
                assert "division" not in shape.error  # never PostgreSQL's own text over PHI


def test_the_executor_records_the_outcome_of_held_statements(runs: dict[str, Run]) -> None:
    for front in STATEMENT_FRONTS:
        agent = runs[front].agent
        fronts = set(
            AuditEvent.objects.filter(
                ticket_id__in=Ticket.objects.filter(agent=agent).values("pk"),
                kind__in=[EventKind.TICKET_EXECUTED, EventKind.TICKET_FAILED],
            ).values_list("front", flat=True)
        )
        assert fronts == {"worker"}, front


# --- the wire's own corners --------------------------------------------------------------------------------------


def _wire_agent(services) -> tuple[Agent, str]:  # type: ignore[no-untyped-def]
    return make_agent(make_user(Role.ENGINEER))


def test_a_wire_query_that_fails_after_sending_rows_has_one_failure_record(services) -> None:  # type: ignore[no-untyped-def]
    agent, token = _wire_agent(services)
    with WireClient(services.gateway_port, agent.name, token) as client:
        answer = client.query("SELECT g, 10 / (50 - g) AS q FROM generate_series(1, 60) g")
    assert sum(isinstance(message, DataRow) for message in answer) == 49, answer  # then the error, at 50
    groups = _settled(agent, 1)
    (records,) = groups.values()
    assert [event.kind for event in records] == [EventKind.QUERY_SUBMITTED, EventKind.QUERY_FAILED]
    failure = records[1].details
    # scratch holds no PHI: PostgreSQL's own message is kept, after its SQLSTATE.
    assert (failure["sqlstate"], failure["error"]) == (DIVISION_BY_ZERO, "22012: division by zero")
    assert records[1].summary == failure["error"] and records[1].outcome == "failure"


def test_a_wire_statement_in_an_aborted_transaction_fails_with_its_sqlstate(services) -> None:  # type: ignore[no-untyped-def]
    agent, token = _wire_agent(services)
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    with psycopg.connect(dsn) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / (id - id) FROM scratch")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT id FROM scratch WHERE id = %s", (1,))
        conn.rollback()
    groups = _settled(agent, 4)  # BEGIN, the failing read, the read in the failed block, ROLLBACK
    failed = sorted(
        records[-1].details["sqlstate"] for records in groups.values() if records[-1].kind == EventKind.QUERY_FAILED
    )
    assert failed == ["22012", "25P02"]
    for records in groups.values():
        assert [event.kind for event in records][-1] in OUTCOME_OF


def test_a_wire_statement_whose_backend_is_terminated_fails_with_its_sqlstate(services) -> None:  # type: ignore[no-untyped-def]
    agent, token = _wire_agent(services)
    with WireClient(services.gateway_port, agent.name, token, timeout=20) as client:
        client.send(Query("SELECT count(*) FROM generate_series(1, 2000000000) g"))
        pids = wait_until(lambda: _active_upstream(services, agent), 10, what="the statement to run upstream")
        with psycopg.connect(services.target.owner_url, autocommit=True) as owner:
            owner.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
        with pytest.raises(AssertionError):  # the gateway relays the FATAL and closes the session
            client.read_until_ready()
    groups = _settled(agent, 1)
    (records,) = groups.values()
    assert [event.kind for event in records] == [EventKind.QUERY_SUBMITTED, EventKind.QUERY_FAILED]
    assert records[1].details["sqlstate"] == "57P01"


def _active_upstream(services: Any, agent: Agent) -> list[int]:
    with psycopg.connect(services.target.owner_url) as owner:
        rows = owner.execute(
            "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND application_name LIKE %s",
            (f"phigate-wire/{agent.name}%",),
        ).fetchall()
    return [row[0] for row in rows]
