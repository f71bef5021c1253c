"""Wire-protocol edges: protocol state the gateway must track like PostgreSQL does, or refuse (invariants 1, 4, 6).

Each test drives the gateway with a raw protocol client (tests/wire_client.py) so the exact message sequence is
under the test's control, and asserts what PostgreSQL itself would answer plus the product's rules: no PHI
beyond its mask, every name the gateway does not know refused, every statement audited as what actually ran.
Every read is bounded by a few seconds, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest

from approvals.models import Ticket
from audit.models import AuditEvent, EventKind
from gateway.pgwire.backend import (
    BackendMessage,
    CommandComplete,
    DataRow,
    EmptyQueryResponse,
    ErrorResponse,
    NoticeResponse,
    ReadyForQuery,
    RowDescription,
)
from gateway.pgwire.common import CopyData, CopyDone
from gateway.pgwire.frontend import Bind, Describe, Execute, Flush, Parse, PasswordMessage, Query, Sync
from gateway.pgwire.states import State
from identity.roles import Role
from tests import environment
from tests.factories import make_agent, make_user
from tests.services import wait_until
from tests.wire_client import WireClient, WireClosed, WireTimeout, errors, of_type, rows, sqlstates, wire_text

INT4_OID = 23
TEXT_OID = 25
PHI_SQL = "SELECT ssn, full_name FROM patients WHERE id <= 3 ORDER BY id"


@pytest.fixture
def agent(services):  # type: ignore[no-untyped-def]
    owner = make_user(Role.ENGINEER)
    agent, token = make_agent(owner)
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    return {"agent": agent, "token": token, "dsn": dsn, "port": services.gateway_port}


@pytest.fixture
def client(agent) -> Iterator[WireClient]:  # type: ignore[no-untyped-def]
    with WireClient(agent["port"], agent["agent"].name, agent["token"]) as wire:
        yield wire


def owner_rows(services, sql: str) -> list[tuple]:  # type: ignore[no-untyped-def,type-arg]
    with psycopg.connect(services.target.owner_url) as conn:
        return conn.execute(sql).fetchall()


def phi_truth(services) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(str(ssn), str(name)) for ssn, name in owner_rows(services, PHI_SQL)]


def assert_no_phi(messages: list[BackendMessage], truth: list[tuple[str, str]]) -> None:
    """No SSN (whole, or its digits) and no full name (any case) in anything the client was sent."""
    sent = wire_text(messages)
    for ssn, name in truth:
        assert ssn not in sent, f"raw SSN {ssn!r} reached the client: {sent[:600]}"
        assert ssn.replace("-", "") not in sent, f"SSN digits of {ssn!r} reached the client: {sent[:600]}"
        for form in (name, name.upper(), name.lower()):
            assert form not in sent, f"raw name {form!r} reached the client: {sent[:600]}"


def assert_masked_or_refused(messages: list[BackendMessage], truth: list[tuple[str, str]]) -> None:
    """Either an error (refused) or rows whose SSN column shows only the mask (``***1234``)."""
    assert_no_phi(messages, truth)
    got = rows(messages)
    if not got:
        assert errors(messages), f"neither rows nor a refusal: {messages}"
        return
    for (ssn, _), row in zip(truth, got, strict=False):
        assert row[0] == "***" + ssn[-4:], f"SSN column not masked: {row!r}"


def submitted(agent_obj) -> list[str]:  # type: ignore[no-untyped-def]
    return list(
        AuditEvent.objects.filter(agent=agent_obj, kind=EventKind.QUERY_SUBMITTED)
        .order_by("id")
        .values_list("statement", flat=True)
    )


def wait_for_submitted(agent_obj, predicate, timeout: float = 10) -> list[str]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    statements = submitted(agent_obj)
    while time.monotonic() < deadline and not predicate(statements):
        time.sleep(0.1)
        statements = submitted(agent_obj)
    return statements


def simple_ok(client: WireClient, sql: str) -> list[BackendMessage]:
    replies = client.query(sql)
    assert not errors(replies), f"{sql!r} failed: {errors(replies)}"
    return replies


# --- 1. a reused statement name -----------------------------------------------------------------------------


def _reuse_name(client: WireClient, first: str) -> list[BackendMessage]:
    """Parse s1 twice (PostgreSQL refuses the second with 42P05 and keeps the first), then run s1."""
    first_replies = client.batch(Parse("s1", first))
    assert not errors(first_replies), first_replies
    second = client.batch(Parse("s1", "SELECT 1"))
    assert sqlstates(second) == ["42P05"], second  # as PostgreSQL: prepared statement "s1" already exists
    return client.batch(Bind("", "s1"), Execute("", 0))


def test_reused_statement_name_keeps_the_first_statements_masks(services, agent, client) -> None:  # type: ignore[no-untyped-def]
    """A refused re-Parse of a name must not swap the gateway's view of it: the first (PHI) statement still runs."""
    truth = phi_truth(services)
    replies = _reuse_name(client, PHI_SQL)
    assert_masked_or_refused(replies, truth)


@pytest.mark.parametrize(
    "first",
    [
        # held (ORDER BY a PHI column), so parsed upstream as written: computed PHI not withheld
        "SELECT upper(full_name), ssn || '' FROM patients WHERE id <= 3 ORDER BY ssn",
        # held (filters on PHI); its cast error would quote the SSN
        "SELECT id FROM patients WHERE ssn::int > 0",
    ],
)
def test_reused_statement_name_never_runs_a_held_read_unmasked(services, agent, client, first: str) -> None:  # type: ignore[no-untyped-def]
    """A held read parsed as s1 must not run under the refused re-Parse's harmless decision (raw computed PHI)."""
    truth = phi_truth(services)
    replies = _reuse_name(client, first)
    assert_no_phi(replies, truth)
    assert not of_type(replies, DataRow) and not of_type(replies, CommandComplete), f"the held read ran: {replies}"


def test_reused_statement_name_is_audited_as_the_statement_that_ran(services, agent, client) -> None:  # type: ignore[no-untyped-def]
    """The audit trail must name the statement PostgreSQL executed, not the refused re-Parse (invariant 6)."""
    replies = _reuse_name(client, PHI_SQL)
    if not rows(replies):
        return  # refused: nothing ran, nothing to name
    statements = wait_for_submitted(agent["agent"], lambda s: len(s) >= 1)
    assert statements, "no submitted record for the executed statement"
    assert statements[-1] == PHI_SQL, f"audited {statements[-1]!r} but PostgreSQL ran {PHI_SQL!r}"


@pytest.mark.parametrize(
    "held",
    [
        "DO $$BEGIN RAISE NOTICE 'ran: %', (SELECT ssn FROM patients WHERE id = 1); END$$",
        "DELETE FROM scratch WHERE id = 47",
    ],
)
def test_reused_statement_name_never_runs_a_held_statement(services, agent, client, held: str) -> None:  # type: ignore[no-untyped-def]
    """A held statement parsed as s1 must not run because a refused re-Parse named s1 looked harmless."""
    truth = phi_truth(services)
    replies = _reuse_name(client, held)
    assert_no_phi(replies, truth)
    assert not of_type(replies, CommandComplete), f"the held statement ran: {replies}"
    assert not of_type(replies, NoticeResponse), f"the held statement ran: {replies}"
    assert sqlstates(replies) == ["HA001"], f"expected a ticket (HA001), got {replies}"
    assert owner_rows(services, "SELECT count(*) FROM scratch WHERE id = 47") == [(1,)]


# --- 2. a cursor's portal executed through the extended protocol ------------------------------------------


@pytest.mark.parametrize("hold", [True, False])
def test_executing_a_cursor_portal_never_relays_raw_values(services, client, hold: bool) -> None:  # type: ignore[no-untyped-def]
    """A cursor is a portal upstream; Execute of a portal the gateway did not Bind must be masked or refused."""
    truth = phi_truth(services)
    simple_ok(client, "BEGIN")
    declared = client.query(
        f"DECLARE hc CURSOR {'WITH HOLD ' if hold else ''}FOR SELECT ssn, full_name FROM patients "
        "WHERE id <= 3 ORDER BY id"
    )
    if errors(declared):
        pytest.skip(f"DECLARE refused by policy: {errors(declared)}")  # refusing is correct as well
    if hold:
        simple_ok(client, "COMMIT")
    replies = client.batch(Execute("hc", 0))
    assert_masked_or_refused(replies, truth)


# --- 3. DECLARE and FETCH ------------------------------------------------------------------------------------


def test_fetch_from_a_cursor_over_computed_phi_is_masked(services, client) -> None:  # type: ignore[no-untyped-def]
    """FETCH returns a cursor's rows: computed and plain PHI columns must be masked as the DECLARE's query."""
    truth = phi_truth(services)
    simple_ok(client, "BEGIN")
    declared = client.query(
        "DECLARE c CURSOR FOR SELECT upper(full_name), ssn || '', ssn FROM patients WHERE id <= 3 ORDER BY id"
    )
    replies = declared + client.query("FETCH 3 FROM c")
    assert_no_phi(replies, truth)


def test_fetch_error_from_a_phi_cast_does_not_echo_the_value(services, client) -> None:  # type: ignore[no-untyped-def]
    """A FETCH that would fail on a PHI value (``ssn::int``) must not quote the value in its error (invariant 7)."""
    truth = phi_truth(services)
    simple_ok(client, "BEGIN")
    declared = client.query("DECLARE c2 CURSOR FOR SELECT ssn::int FROM patients WHERE id <= 3 ORDER BY id")
    replies = declared + client.query("FETCH 1 FROM c2")
    assert_no_phi(replies, truth)


# --- 4. names the gateway does not know ---------------------------------------------------------------------


def assert_refused_like_postgresql(replies: list[BackendMessage], sqlstate: str, name: str) -> None:
    """One error with PostgreSQL's SQLSTATE, carried once (not repeated in the message), naming the unknown name."""
    assert sqlstates(replies) == [sqlstate], replies
    [error] = errors(replies)
    assert not error.message.startswith(sqlstate), f"SQLSTATE repeated in the message: {error.fields}"
    assert f'"{name}"' in error.message, f"the message does not name {name!r} as PostgreSQL's does: {error.fields}"
    assert isinstance(replies[-1], ReadyForQuery), replies


def test_execute_of_an_unknown_portal_is_34000(client) -> None:
    """An unknown portal is refused with PostgreSQL's SQLSTATE (invariant 1), and the session goes on."""
    replies = client.batch(Execute("no_such_portal", 0))
    assert_refused_like_postgresql(replies, "34000", "no_such_portal")
    assert not errors(client.query("SELECT 1"))


def test_bind_to_an_unknown_statement_is_26000(client) -> None:
    """Bind to a statement name nobody prepared is refused with 26000, like PostgreSQL."""
    replies = client.batch(Bind("p", "no_such_statement"), Execute("p", 0))
    assert_refused_like_postgresql(replies, "26000", "no_such_statement")


@pytest.mark.parametrize(("kind", "sqlstate"), [("S", "26000"), ("P", "34000")])
def test_describe_of_an_unknown_name(client, kind: str, sqlstate: str) -> None:  # type: ignore[no-untyped-def]
    """Describe of an unknown statement (26000) or portal (34000) is refused like PostgreSQL."""
    replies = client.batch(Describe(kind, "no_such_name"))  # type: ignore[arg-type]
    assert_refused_like_postgresql(replies, sqlstate, "no_such_name")


def test_fetch_from_an_unknown_cursor_is_34000(client) -> None:
    """FETCH from a cursor that does not exist is PostgreSQL's 34000, not a ticket or another error."""
    simple_ok(client, "BEGIN")
    replies = client.query("FETCH 1 FROM no_such_cursor")
    assert_refused_like_postgresql(replies, "34000", "no_such_cursor")


def test_every_refusal_of_an_unknown_name_is_on_record_as_a_denial(agent, client) -> None:  # type: ignore[no-untyped-def]
    """A client that guesses names is worth a reviewer's look: each refusal is a denial record of its own,
    naming the protocol message (and the statement, for FETCH), in the agent's session."""
    client.batch(Execute("guessed_portal", 0))
    client.batch(Bind("p", "guessed_statement"), Execute("p", 0))
    client.batch(Describe("S", "guessed_name"))
    simple_ok(client, "BEGIN")
    client.query("FETCH 1 FROM guessed_cursor")
    client.query("ROLLBACK")

    def denials() -> list[AuditEvent] | None:
        found = list(AuditEvent.objects.filter(kind=EventKind.QUERY_DENIED, agent=agent["agent"]).order_by("id"))
        return found if len(found) >= 4 else None

    found = wait_until(denials, 15, what="four denial records")
    assert [(e.details["protocol_message"], e.details["sqlstate"]) for e in found] == [
        ("Execute", "34000"),
        ("Bind", "26000"),
        ("Describe", "26000"),
        ("Query", "34000"),
    ]
    assert 'portal "guessed_portal" does not exist' in found[0].summary
    assert found[3].statement == "FETCH 1 FROM guessed_cursor"
    assert all(e.details["refusal"] == "unknown name" and e.outcome == "denied" for e in found)


# --- 5. notices --------------------------------------------------------------------------------------------


def test_a_notice_never_carries_a_phi_value(services, client) -> None:  # type: ignore[no-untyped-def]
    """A WARNING/NOTICE built from a PHI value must be scrubbed like an error (invariant 4: notices)."""
    truth = phi_truth(services)
    replies = client.query(
        "SELECT pg_cancel_backend(replace(ssn, '-', '')::int) FROM patients WHERE id <= 3 ORDER BY id"
    )
    assert_no_phi(replies, truth)


# --- 6. Flush after an error (asyncpg's Parse + Describe + Flush) ---------------------------------------

FLUSH_WAIT = 3.0


@pytest.mark.parametrize(
    ("sql", "sqlstate"),
    [
        ("SELEC 1", "42601"),  # the gateway's parser refuses it
        ("COPY scratch TO PROGRAM 'true'", "42501"),  # denied by policy
        ("SELECT no_such_column FROM diagnosis_codes", "42703"),  # the gateway asks PostgreSQL's analysis
        ("SELECT 'a' + 1", "22P02"),  # only the upstream Parse fails: its error must not wait for Sync
    ],
)
def test_an_error_is_sent_on_flush_without_waiting_for_sync(client, sql: str, sqlstate: str) -> None:  # type: ignore[no-untyped-def]
    """After Parse fails, Describe + Flush must deliver the ErrorResponse at once, as PostgreSQL does (asyncpg)."""
    client.send(Parse("", sql), Describe("S", ""), Flush())
    try:
        replies = client.read_until(lambda m: isinstance(m, ErrorResponse), "ErrorResponse after Flush", FLUSH_WAIT)
    except WireTimeout as timeout:
        client.send(Sync())
        pytest.fail(f"no ErrorResponse within {FLUSH_WAIT}s of Flush (received {timeout.received})")
    assert sqlstates(replies) == [sqlstate], replies
    client.send(Sync())
    after = client.read_until_ready()
    assert not errors(after) and isinstance(after[-1], ReadyForQuery), after


# --- 7. empty and comment-only queries ----------------------------------------------------------------------


@pytest.mark.parametrize("sql", ["", "   ", "-- just a comment", "/* c */", ";"])
def test_empty_simple_query_is_empty_query_response(client, sql: str) -> None:  # type: ignore[no-untyped-def]
    """An empty or comment-only Query gets EmptyQueryResponse + ReadyForQuery like PostgreSQL, not an error."""
    replies = client.query(sql)
    assert [type(m) for m in replies] == [EmptyQueryResponse, ReadyForQuery], replies


@pytest.mark.parametrize("sql", ["", "-- just a comment", "/* c */"])
def test_empty_extended_query_is_empty_query_response(client, sql: str) -> None:  # type: ignore[no-untyped-def]
    """Parse/Bind/Execute of an empty statement answers EmptyQueryResponse, like PostgreSQL."""
    replies = client.batch(Parse("", sql), Bind("", ""), Execute("", 0))
    assert not errors(replies), replies
    assert of_type(replies, EmptyQueryResponse), replies


# --- 8. Describe of a cursor portal -----------------------------------------------------------------------


def test_describe_of_a_cursor_portal_reports_real_types(client) -> None:
    """A non-PHI cursor's columns keep their types (int4 stays int4), so drivers decode ints as ints."""
    simple_ok(client, "BEGIN")
    simple_ok(client, "DECLARE c CURSOR FOR SELECT id, label FROM scratch ORDER BY id")
    replies = client.batch(Describe("P", "c"))
    descriptions = of_type(replies, RowDescription)
    assert descriptions, replies
    assert [f.type_oid for f in descriptions[0].fields] == [INT4_OID, TEXT_OID], descriptions[0]


def test_psycopg_named_cursor_over_non_phi_returns_ints(services, agent) -> None:  # type: ignore[no-untyped-def]
    """psycopg's named (server-side) cursor over a non-PHI table gets the same values as a direct connection."""
    sql = "SELECT id, label FROM scratch WHERE id <= 5 ORDER BY id"
    with psycopg.connect(agent["dsn"], connect_timeout=5) as conn, conn.cursor(name="named") as cursor:
        cursor.execute(sql)
        got = cursor.fetchall()
    assert got == owner_rows(services, sql)


# --- 9. a held statement inside a transaction block ---------------------------------------------------------


def test_held_statement_aborts_the_transaction_like_an_error(client) -> None:
    """After HA001 inside BEGIN the block is aborted (25P02) as after any error, so the client cannot commit half."""
    simple_ok(client, "BEGIN")
    held = client.query("DELETE FROM scratch WHERE id = 46")
    assert sqlstates(held) == ["HA001"], held
    assert held[-1] == ReadyForQuery("E"), f"ReadyForQuery after the error must say 'E' (failed block): {held[-1]}"
    after = client.query("SELECT 1")
    assert sqlstates(after) == ["25P02"], after
    rollback = client.query("ROLLBACK")
    assert not errors(rollback) and rollback[-1] == ReadyForQuery("I"), rollback
    # The ticket tells its reviewers the statement left its transaction: approved, it runs on its own.
    ticket = Ticket.objects.get(pk=int(held[0].message.rsplit(" ", 1)[-1]))
    assert "inside a transaction block" in ticket.reason and "on its own" in ticket.reason


def test_held_statement_outside_a_transaction_has_no_such_note(client) -> None:
    held = client.query("DELETE FROM scratch WHERE id = 47")
    assert sqlstates(held) == ["HA001"] and held[-1] == ReadyForQuery("I"), held
    ticket = Ticket.objects.get(pk=int(held[0].message.rsplit(" ", 1)[-1]))
    assert "transaction" not in ticket.reason


# --- 10. error fields as PostgreSQL sends them --------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_error_fields_of_a_non_phi_statement_are_postgresqls(services, client, protocol: str) -> None:  # type: ignore[no-untyped-def]
    """The SQLSTATE appears once (not also in the message) and the Position field is kept, as from PostgreSQL."""
    sql = "SELECT * FROM no_such_table"
    with psycopg.connect(services.target.owner_url) as direct, pytest.raises(psycopg.Error) as raised:
        direct.execute(sql)
    expected = raised.value.diag
    extended = (Parse("", sql), Bind("", ""), Execute("", 0))
    replies = client.query(sql) if protocol == "simple" else client.batch(*extended)
    [error] = errors(replies)
    assert error.sqlstate == expected.sqlstate == "42P01"
    assert not error.message.startswith("42P01"), error.fields
    assert error.message == expected.message_primary, error.fields
    assert error.fields.get("P") == expected.statement_position, error.fields


# --- 11. connection-pool reset sequences --------------------------------------------------------------------


def test_asyncpg_pool_reset_sequence_runs(client) -> None:
    """asyncpg's pool runs this on every release: refusing or holding it breaks every pooled client."""
    replies = client.query("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;")
    assert not errors(replies), replies
    assert [m.tag for m in of_type(replies, CommandComplete)] == ["SELECT 1", "CLOSE CURSOR ALL", "UNLISTEN", "RESET"]


def test_discard_all_runs(client) -> None:
    """DISCARD ALL (pgbouncer's and many pools' reset query) succeeds like on PostgreSQL."""
    replies = client.query("DISCARD ALL")
    assert not errors(replies), replies
    assert [m.tag for m in of_type(replies, CommandComplete)] == ["DISCARD ALL"]


# --- 12. the upstream connection is lost ---------------------------------------------------------------------


def _kill_upstream(services, agent_name: str) -> None:  # type: ignore[no-untyped-def]
    """Terminate the session's upstream backend (as the target's owner) and wait until it is gone."""
    who = (environment.READ_ROLE, f"phigate-wire/{agent_name}")
    where = "FROM pg_stat_activity WHERE usename = %s AND application_name = %s"
    with psycopg.connect(services.target.owner_url, autocommit=True) as conn:
        assert conn.execute(f"SELECT pg_terminate_backend(pid) {where}", who).fetchall() == [(True,)]
        deadline = time.monotonic() + 3
        while conn.execute(f"SELECT count(*) {where}", who).fetchone() != (0,):
            assert time.monotonic() < deadline, "the upstream backend did not exit"
            time.sleep(0.01)


@pytest.mark.parametrize(
    ("statement", "protocol"),
    [
        ("SELECT 1", "simple"),
        ("SELECT label FROM scratch WHERE id = 2", "simple"),
        ("SELECT label FROM scratch WHERE id = 2", "extended"),
    ],
)
def test_a_killed_upstream_is_reported_not_hung(services, agent, client, statement: str, protocol: str) -> None:  # type: ignore[no-untyped-def]
    """When the session's upstream backend dies, the next statement gets a FATAL error at once, not a hang."""

    def send() -> None:
        if protocol == "simple":
            client.send(Query(statement))
        else:
            client.send(Parse("", statement), Bind("", ""), Execute("", 0), Sync())

    # The catalog snapshot lives CATALOG_TTL_SECONDS (1 in tests): let it expire so this run loads a fresh one
    # and the statement's decision stays cached for the next second (the simple protocol's fast path).
    time.sleep(1.1)
    send()
    assert not errors(client.read_until_ready())
    _kill_upstream(services, agent["agent"].name)
    send()
    try:
        replies = client.read_until(lambda m: isinstance(m, ErrorResponse), "an ErrorResponse", 5)
    except WireClosed as closed:
        replies = closed.received
    except WireTimeout as timeout:
        pytest.fail(f"no error within 5s after the upstream was killed: {timeout.received}")
    fatal = [e for e in errors(replies) if e.severity == "FATAL"]
    assert fatal and fatal[0].sqlstate in {"57P01", "08006"}, replies
    extra = [] if client.closed else client.read_available(5)
    assert client.closed, f"like PostgreSQL, the session must end after its FATAL error; then received {extra}"


# --- 13. statement timeout ----------------------------------------------------------------------------------


def _show(client: WireClient, setting: str) -> str:
    replies = client.query(f"SHOW {setting}")
    assert not errors(replies), replies
    [[value]] = rows(replies)
    assert value is not None
    return value


def test_statement_timeout_cannot_be_switched_off(client) -> None:
    """Wire sessions keep a statement timeout: ``SET statement_timeout = 0`` is refused or capped."""
    assert _show(client, "statement_timeout") != "0", "the gateway sets no statement timeout at all"
    replies = client.query("SET statement_timeout = 0")
    if errors(replies):
        return  # refused
    assert _show(client, "statement_timeout") != "0", "SET statement_timeout = 0 switched the timeout off"


def test_reset_all_keeps_the_statement_timeout(client) -> None:
    """RESET ALL (the pool reset) must not drop the gateway's statement timeout either."""
    client.query("RESET ALL")
    assert _show(client, "statement_timeout") != "0"


# --- the protocol's state table runs in production ------------------------------------------------------------


def test_the_state_table_judges_every_client_message(client) -> None:  # type: ignore[no-untyped-def]
    """Production goes through gateway.pgwire.states: COPY leftovers while idle are discarded as its IGNORED set
    says, and a message its table does not allow gets FATAL 08P01 naming the table's state."""
    client.send(CopyData(b"stray"), CopyDone())
    assert client.read_available(0.5) == []  # discarded, like PostgreSQL
    assert rows(client.query("SELECT 1")) == [("1",)]
    client.send(PasswordMessage(b"late\x00"))
    try:
        replies = client.read_until(lambda m: isinstance(m, ErrorResponse), "an ErrorResponse", 5)
    except WireClosed as closed:
        replies = closed.received
    [fatal] = errors(replies)
    assert fatal.severity == "FATAL" and fatal.sqlstate == "08P01", fatal.fields
    assert "unexpected PasswordMessage" in fatal.message and State.READY.value in fatal.message


# --- SQL PREPARE and EXECUTE (pg_dump's per-object queries) -------------------------------------------------


def test_sql_prepare_and_execute_run_under_the_prepared_querys_masks(services, agent, client) -> None:  # type: ignore[no-untyped-def]
    """EXECUTE's rows are masked with the lineage of the query PREPARE named, computed PHI included, and the
    record names the EXECUTE and the prepared text."""
    truth = phi_truth(services)
    simple_ok(client, "PREPARE phi_by_id(int) AS SELECT ssn, upper(full_name) FROM patients WHERE id <= $1 ORDER BY id")
    replies = simple_ok(client, "EXECUTE phi_by_id(3)")
    assert_no_phi(replies, truth)
    got = rows(replies)
    assert [row[0] for row in got] == ["***" + ssn[-4:] for ssn, _ in truth]
    statements = wait_for_submitted(agent["agent"], lambda s: "EXECUTE phi_by_id(3)" in s)
    assert "EXECUTE phi_by_id(3)" in statements
    event = AuditEvent.objects.filter(agent=agent["agent"], statement="EXECUTE phi_by_id(3)").first()
    assert event is not None and event.details["prepared_statement"] == "phi_by_id"
    assert event.details["prepared_sql"].startswith("SELECT ssn, upper(full_name)")


@pytest.mark.parametrize(
    ("prepare", "sqlstate"),
    [
        ("PREPARE w(int) AS DELETE FROM scratch WHERE id = $1", "0A000"),  # needs approval: not prepared
        ("PREPARE w AS SELECT pg_read_file('/etc/passwd')", "42501"),  # denied as the query itself would be
        ("PREPARE w AS SELECT 1; SELECT 2", "0A000"),  # not alone
    ],
)
def test_sql_prepare_of_what_may_not_run_freely_prepares_nothing(services, client, prepare: str, sqlstate: str) -> None:  # type: ignore[no-untyped-def]
    replies = client.query(prepare)
    assert sqlstates(replies)[:1] == [sqlstate] or errors(replies), replies
    assert sqlstates(client.query("EXECUTE w(47)")) == ["26000"]  # the server never got it either
    assert owner_rows(services, "SELECT count(*) FROM scratch WHERE id = 47") == [(1,)]


def test_sql_execute_refuses_unknown_names_expressions_and_held_parsed_statements(services, client) -> None:  # type: ignore[no-untyped-def]
    replies = client.query("EXECUTE nothing_here")
    assert sqlstates(replies) == ["26000"]
    assert errors(replies)[0].message == 'prepared statement "nothing_here" does not exist'
    simple_ok(client, "PREPARE by_id(text) AS SELECT id FROM patients WHERE id = 1 AND $1 = 'x'")
    truth = phi_truth(services)
    replies = client.query("EXECUTE by_id((SELECT ssn FROM patients WHERE id = 1))")  # an argument that reads PHI
    assert sqlstates(replies) == ["0A000"]
    assert_no_phi(replies, truth)
    # A statement Parsed through the protocol that needs approval is not run by a SQL EXECUTE of its name.
    assert not errors(client.batch(Parse("held_one", "DELETE FROM scratch WHERE id = 47")))
    assert sqlstates(client.query("EXECUTE held_one")) == ["0A000"]
    assert owner_rows(services, "SELECT count(*) FROM scratch WHERE id = 47") == [(1,)]
    # DEALLOCATE forgets a PREPAREd name on both sides.
    simple_ok(client, "DEALLOCATE by_id")
    assert sqlstates(client.query("EXECUTE by_id('x')")) == ["26000"]


def test_a_refused_re_prepare_keeps_the_first_statement_and_its_masks(services, client) -> None:  # type: ignore[no-untyped-def]
    """The reused-name attack through SQL: PostgreSQL answers 42P05 to a second PREPARE of a name and keeps the
    first statement, and so does the gateway's book."""
    truth = phi_truth(services)
    simple_ok(client, f"PREPARE s1 AS {PHI_SQL}")
    assert sqlstates(client.query("PREPARE s1 AS SELECT 1, 2")) == ["42P05"]
    replies = simple_ok(client, "EXECUTE s1")
    assert_masked_or_refused(replies, truth)
    assert len(rows(replies)) == len(truth)
