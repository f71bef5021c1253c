"""The server-side session state machine of gateway.pgwire.states, and transaction status tracking."""

from __future__ import annotations

import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import pgwire as pg
from gateway.pgwire.states import IGNORED, ON_RECEIVE, ON_SEND, FatalError, State
from tests.test_pgwire_messages import backend_messages, regular_frontend_messages, startup_packets

STARTUP = pg.StartupMessage(parameters={"user": "alice", "database": "clinic"})
ERROR = pg.error_response("ERROR", "42501", "refused")
FATAL = pg.error_response("FATAL", "57P01", "terminating connection")


def receive(conn: pg.ServerConnection, *messages: pg.FrontendMessage) -> State:
    for message in messages:
        conn.receive(message)
    return conn.state


def send(conn: pg.ServerConnection, *messages: pg.BackendMessage) -> State:
    for message in messages:
        conn.send(message)
    return conn.state


def ready() -> pg.ServerConnection:
    conn = pg.ServerConnection()
    receive(conn, STARTUP)
    send(conn, pg.AuthenticationOk(), pg.BackendKeyData(1, b"abcd"), pg.ReadyForQuery("I"))
    assert conn.state is State.READY
    return conn


def refused(conn: pg.ServerConnection, message: pg.FrontendMessage) -> None:
    before = conn.state
    with pytest.raises(pg.ProtocolError) as caught:
        conn.receive(message)
    assert caught.value.sqlstate == "08P01"
    assert conn.state is before  # unchanged, so the FATAL error can still be sent
    assert send(conn, FATAL) is State.CLOSED


# --- tables ----------------------------------------------------------------------------------------------


def _classes(alias: object) -> set[type]:
    found: set[type] = set()
    for arg in typing.get_args(alias):
        found |= _classes(arg) if typing.get_args(arg) else {arg}
    return found


def test_tables_are_complete_and_consistent() -> None:
    frontend_types = _classes(pg.FrontendMessage)
    backend_types = _classes(pg.BackendMessage) | {FatalError}
    assert set(ON_RECEIVE) == set(State) == set(ON_SEND)
    for state in State:
        assert set(ON_RECEIVE[state]) <= frontend_types
        assert set(ON_SEND[state]) <= backend_types
        assert all(isinstance(target, State) for target in ON_RECEIVE[state].values())
        assert all(isinstance(target, State) for target in ON_SEND[state].values())
        if state is not State.CLOSED:
            assert ON_SEND[state][FatalError] is State.CLOSED
    assert ON_RECEIVE[State.CLOSED] == {} and ON_SEND[State.CLOSED] == {}
    for state, kinds in IGNORED.items():
        for kind in kinds:
            assert ON_RECEIVE[state][kind] is state  # an ignored message never moves the session
    for state in State:
        if state is not State.CLOSED and state.name.startswith(("AUTH", "READY", "SIMPLE", "EXT", "SYNC", "COPY")):
            assert ON_RECEIVE[state][pg.Terminate] is State.CLOSED


# --- startup and authentication --------------------------------------------------------------------------


def test_trust_login() -> None:
    conn = pg.ServerConnection()
    assert conn.receive(STARTUP) is State.AUTHENTICATING
    assert conn.send(pg.AuthenticationOk()) is State.AUTHENTICATED
    assert send(conn, pg.ParameterStatus("server_version", "16.0"), pg.BackendKeyData(1, b"k" * 4)) is (
        State.AUTHENTICATED
    )
    assert conn.send(pg.ReadyForQuery("I")) is State.READY


def test_cleartext_password_login() -> None:
    conn = pg.ServerConnection()
    receive(conn, STARTUP)
    assert conn.send(pg.AuthenticationCleartextPassword()) is State.AWAITING_PASSWORD
    assert conn.receive(pg.password_message("pw")) is State.AUTHENTICATING
    assert send(conn, pg.AuthenticationOk(), pg.ReadyForQuery("I")) is State.READY


def test_scram_login() -> None:
    conn = pg.ServerConnection()
    receive(conn, STARTUP)
    send(conn, pg.NegotiateProtocolVersion(0, ("_pq_.foo",)))
    assert conn.send(pg.AuthenticationSASL(("SCRAM-SHA-256",))) is State.AWAITING_PASSWORD
    assert conn.receive(pg.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")) is State.AUTHENTICATING
    assert conn.send(pg.AuthenticationSASLContinue(b"r=abcdef,s=c2FsdA==,i=4096")) is State.AWAITING_PASSWORD
    assert conn.receive(pg.sasl_response(b"c=biws,r=abcdef,p=proof")) is State.AUTHENTICATING
    assert conn.send(pg.AuthenticationSASLFinal(b"v=sig")) is State.AUTHENTICATING
    assert send(conn, pg.AuthenticationOk(), pg.ReadyForQuery("I")) is State.READY


def test_failed_login_closes() -> None:
    conn = pg.ServerConnection()
    receive(conn, STARTUP)
    send(conn, pg.AuthenticationMD5Password(b"salt"))
    receive(conn, pg.password_message("wrong"))
    assert conn.send(pg.error_response("FATAL", "28P01", "password authentication failed")) is State.CLOSED


def test_encryption_negotiation() -> None:
    conn = pg.ServerConnection()
    assert conn.receive(pg.GSSENCRequest()) is State.AWAITING_STARTUP_GSS_TRIED
    assert conn.receive(pg.SSLRequest()) is State.AWAITING_STARTUP_BOTH_TRIED
    assert conn.receive(STARTUP) is State.AUTHENTICATING


@pytest.mark.parametrize(
    ("first", "again"),
    [(pg.SSLRequest(), pg.SSLRequest()), (pg.GSSENCRequest(), pg.GSSENCRequest())],
)
def test_encryption_request_only_once(first: pg.StartupPacket, again: pg.StartupPacket) -> None:
    conn = pg.ServerConnection()
    conn.receive(first)
    refused(conn, again)


def test_cancel_request_closes() -> None:
    conn = pg.ServerConnection()
    assert conn.receive(pg.CancelRequest(42, b"abcd")) is State.CLOSED
    with pytest.raises(pg.ProtocolError):
        conn.receive(STARTUP)


@pytest.mark.parametrize(
    "message",
    [pg.Query("SELECT 1"), pg.PasswordMessage(b"pw\x00"), STARTUP, pg.Parse("", "SELECT 1"), pg.Sync()],
)
def test_nothing_but_terminate_while_server_is_authenticating(message: pg.FrontendMessage) -> None:
    conn = pg.ServerConnection()
    receive(conn, STARTUP)
    refused(conn, message)


def test_query_while_password_is_awaited() -> None:
    conn = pg.ServerConnection()
    receive(conn, STARTUP)
    send(conn, pg.AuthenticationCleartextPassword())
    refused(conn, pg.Query("SELECT * FROM patients"))


def test_ready_for_query_requires_authentication_ok() -> None:
    conn = pg.ServerConnection()
    receive(conn, STARTUP)
    with pytest.raises(pg.ProtocolError):
        conn.send(pg.ReadyForQuery("I"))
    send(conn, pg.AuthenticationCleartextPassword())
    with pytest.raises(pg.ProtocolError):
        conn.send(pg.AuthenticationOk())  # the password has not arrived yet


def test_second_startup_message_is_refused() -> None:
    refused(ready(), STARTUP)


def test_regular_message_before_startup_is_refused() -> None:
    refused(pg.ServerConnection(), pg.Query("SELECT 1"))


# --- simple query ----------------------------------------------------------------------------------------


def test_simple_query_cycle() -> None:
    conn = ready()
    assert conn.receive(pg.Query("SELECT 1")) is State.SIMPLE_QUERY
    send(
        conn,
        pg.RowDescription((pg.FieldDescription("?column?", 0, 0, 23, 4, -1, 0),)),
        pg.DataRow((b"1",)),
        pg.CommandComplete("SELECT 1"),
        pg.NoticeResponse({"S": "NOTICE", "M": "hi"}),
        ERROR,
        pg.EmptyQueryResponse(),
    )
    assert conn.send(pg.ReadyForQuery("I")) is State.READY


def test_pipelined_query_is_refused_while_one_is_in_flight() -> None:
    conn = ready()
    receive(conn, pg.Query("SELECT 1"))
    refused(conn, pg.Query("SELECT 2"))


def test_extended_message_during_simple_query_is_refused() -> None:
    conn = ready()
    receive(conn, pg.Query("SELECT 1"))
    refused(conn, pg.Parse("", "SELECT 2"))


def test_function_call_is_answered_like_a_query() -> None:
    conn = ready()
    assert conn.receive(pg.FunctionCall(b"\x00\x00\x04\xd2")) is State.SIMPLE_QUERY
    send(conn, pg.error_response("ERROR", "0A000", "fast-path function calls are not supported"))
    assert conn.send(pg.ReadyForQuery("I")) is State.READY


def test_asynchronous_messages_while_idle() -> None:
    conn = ready()
    send(conn, pg.NotificationResponse(7, "chan", "payload"), pg.ParameterStatus("TimeZone", "UTC"))
    assert conn.state is State.READY
    with pytest.raises(pg.ProtocolError):
        conn.send(ERROR)  # a non-fatal error needs a request to answer
    with pytest.raises(pg.ProtocolError):
        conn.send(pg.DataRow((b"x",)))
    assert conn.send(FATAL) is State.CLOSED


# --- extended query --------------------------------------------------------------------------------------


def test_extended_query_cycle() -> None:
    conn = ready()
    receive(conn, pg.Parse("s", "SELECT $1", (23,)), pg.Bind("", "s", (), (b"1",), ()), pg.Describe("P", ""))
    assert conn.state is State.EXTENDED
    send(conn, pg.ParseComplete(), pg.BindComplete())  # a relay may answer while reading ahead
    receive(conn, pg.Execute("", 0))
    assert conn.receive(pg.Sync()) is State.SYNCING
    send(conn, pg.NoData(), pg.CommandComplete("SELECT 1"))
    assert conn.send(pg.ReadyForQuery("I")) is State.READY
    assert not conn.ignored


def test_extended_error_skips_until_sync() -> None:
    conn = ready()
    receive(conn, pg.Parse("", "SELEC 1"))
    assert conn.send(ERROR) is State.EXTENDED_ERROR
    for message in (pg.Bind(), pg.Execute(), pg.Query("SELECT 1"), pg.Flush(), pg.CopyData(b"x")):
        assert conn.receive(message) is State.EXTENDED_ERROR
        assert conn.ignored
    assert conn.receive(pg.Sync()) is State.SYNCING
    assert not conn.ignored
    assert conn.send(pg.ReadyForQuery("I")) is State.READY


def test_error_after_sync_still_ends_with_ready() -> None:
    conn = ready()
    receive(conn, pg.Parse("", "SELEC 1"), pg.Bind(), pg.Execute(), pg.Sync())
    assert conn.send(ERROR) is State.SYNCING
    assert conn.send(pg.ReadyForQuery("I")) is State.READY


def test_batch_after_sync_waits_for_ready_for_query() -> None:
    conn = ready()
    receive(conn, pg.Parse("", "SELECT 1"), pg.Sync())
    refused(conn, pg.Parse("", "SELECT 2"))


def test_query_inside_extended_batch_is_taken_like_postgresql() -> None:
    """PostgreSQL answers what came before the Query, then runs it; a Flush between batches starts none."""
    conn = ready()
    receive(conn, pg.Parse("", "SELECT 1"))
    send(conn, pg.ParseComplete())
    assert conn.receive(pg.Query("SELECT 2")) is State.SIMPLE_QUERY
    with pytest.raises(pg.ProtocolError):
        conn.send(pg.ParseComplete())  # answers to the batch must all have gone before the Query's
    conn = ready()
    assert conn.receive(pg.Flush()) is State.READY
    assert conn.receive(pg.Query("SELECT 1")) is State.SIMPLE_QUERY


def test_portal_suspended_and_parameter_description() -> None:
    conn = ready()
    receive(conn, pg.Describe("S", "s"), pg.Execute("p", 10), pg.Sync())
    send(conn, pg.ParameterDescription((23,)), pg.DataRow((b"1",)), pg.PortalSuspended())
    assert conn.send(pg.ReadyForQuery("T")) is State.READY


# --- COPY ------------------------------------------------------------------------------------------------


def test_copy_in_via_simple_query() -> None:
    conn = ready()
    receive(conn, pg.Query("COPY t FROM STDIN"))
    assert conn.send(pg.CopyInResponse(0, (0, 0))) is State.COPY_IN
    for _ in range(3):
        assert conn.receive(pg.CopyData(b"1\t2\n")) is State.COPY_IN
        assert not conn.ignored
    assert conn.receive(pg.Flush()) is State.COPY_IN
    assert conn.ignored
    assert conn.receive(pg.CopyDone()) is State.SIMPLE_QUERY
    send(conn, pg.CommandComplete("COPY 3"))
    assert conn.send(pg.ReadyForQuery("I")) is State.READY


def test_copy_fail() -> None:
    conn = ready()
    receive(conn, pg.Query("COPY t FROM STDIN"))
    send(conn, pg.CopyInResponse(0, ()))
    assert conn.receive(pg.CopyFail("client gave up")) is State.SIMPLE_QUERY
    send(conn, pg.error_response("ERROR", "57014", "COPY from stdin failed: client gave up"))
    assert conn.send(pg.ReadyForQuery("I")) is State.READY


def test_copy_in_error_then_leftover_copy_data_is_ignored() -> None:
    conn = ready()
    receive(conn, pg.Query("COPY t FROM STDIN"))
    send(conn, pg.CopyInResponse(0, ()))
    receive(conn, pg.CopyData(b"bad row\n"))
    assert conn.send(ERROR) is State.SIMPLE_QUERY
    assert conn.send(pg.ReadyForQuery("I")) is State.READY
    assert conn.receive(pg.CopyData(b"more\n")) is State.READY
    assert conn.ignored
    assert conn.receive(pg.CopyDone()) is State.READY
    assert conn.ignored


def test_other_messages_abort_copy_in() -> None:
    conn = ready()
    receive(conn, pg.Query("COPY t FROM STDIN"))
    send(conn, pg.CopyInResponse(0, ()))
    refused(conn, pg.Query("SELECT 1"))


def test_copy_in_via_extended_query_libpq_style() -> None:
    conn = ready()
    receive(conn, pg.Parse("", "COPY t FROM STDIN"), pg.Bind(), pg.Execute(), pg.Sync())
    send(conn, pg.ParseComplete(), pg.BindComplete())
    assert conn.send(pg.CopyInResponse(0, ())) is State.EXTENDED_COPY_IN
    receive(conn, pg.CopyData(b"1\n"))
    assert conn.receive(pg.CopyDone()) is State.EXTENDED  # the early Sync was swallowed by COPY
    send(conn, pg.CommandComplete("COPY 1"))
    assert conn.receive(pg.Sync()) is State.SYNCING
    assert conn.send(pg.ReadyForQuery("I")) is State.READY


def test_copy_in_extended_error_skips_until_sync() -> None:
    conn = ready()
    receive(conn, pg.Parse("", "COPY t FROM STDIN"), pg.Bind(), pg.Execute())
    send(conn, pg.CopyInResponse(0, ()))
    assert conn.send(ERROR) is State.EXTENDED_ERROR
    receive(conn, pg.CopyData(b"x"), pg.CopyDone())
    assert conn.ignored
    assert conn.receive(pg.Sync()) is State.SYNCING


def test_copy_out_via_simple_query() -> None:
    conn = ready()
    receive(conn, pg.Query("COPY t TO STDOUT"))
    assert conn.send(pg.CopyOutResponse(0, (0,))) is State.COPY_OUT
    send(conn, pg.CopyData(b"1\n"), pg.CopyData(b"2\n"))
    with pytest.raises(pg.ProtocolError):
        conn.send(pg.DataRow((b"1",)))
    assert conn.send(pg.CopyDone()) is State.SIMPLE_QUERY
    send(conn, pg.CommandComplete("COPY 2"))
    assert conn.send(pg.ReadyForQuery("I")) is State.READY


def test_copy_out_via_extended_query() -> None:
    conn = ready()
    receive(conn, pg.Parse("", "COPY t TO STDOUT"), pg.Bind(), pg.Execute())
    assert conn.send(pg.CopyOutResponse(0, ())) is State.EXTENDED_COPY_OUT
    assert conn.receive(pg.Sync()) is State.SYNCING_COPY_OUT  # relay read ahead
    send(conn, pg.CopyData(b"1\n"))
    assert conn.send(pg.CopyDone()) is State.SYNCING
    send(conn, pg.CommandComplete("COPY 1"))
    assert conn.send(pg.ReadyForQuery("I")) is State.READY


def test_copy_out_extended_error_before_sync() -> None:
    conn = ready()
    receive(conn, pg.Parse("", "COPY t TO STDOUT"), pg.Bind(), pg.Execute())
    send(conn, pg.CopyOutResponse(0, ()))
    assert conn.send(ERROR) is State.EXTENDED_ERROR


def test_copy_both_is_never_allowed() -> None:
    conn = ready()
    receive(conn, pg.Query("START_REPLICATION 0/0"))
    with pytest.raises(pg.ProtocolError):
        conn.send(pg.CopyBothResponse(0, ()))


# --- closing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setup",
    [
        (),
        (pg.Query("COPY t FROM STDIN"), pg.CopyInResponse(0, ())),
        (pg.Parse("", "x"),),
        (pg.Parse("", "x"), ERROR),
    ],
    ids=["ready", "copy-in", "extended", "extended-error"],
)
def test_terminate_closes(setup: tuple[pg.FrontendMessage | pg.BackendMessage, ...]) -> None:
    conn = ready()
    for step in setup:
        if isinstance(step, pg.Query | pg.Parse):
            conn.receive(step)
        else:
            conn.send(typing.cast(pg.BackendMessage, step))
    assert conn.receive(pg.Terminate()) is State.CLOSED
    assert not conn.ignored
    with pytest.raises(pg.ProtocolError):
        conn.receive(pg.Sync())
    with pytest.raises(pg.ProtocolError):
        conn.send(FATAL)


def test_can_receive_and_can_send() -> None:
    conn = ready()
    assert conn.can_receive(pg.Query) and not conn.can_receive(pg.StartupMessage)
    assert conn.can_send(pg.NoticeResponse) and not conn.can_send(pg.ReadyForQuery)


@given(st.lists(st.one_of(startup_packets, regular_frontend_messages, backend_messages), max_size=40))
def test_random_sequences_never_corrupt_state(steps: list[pg.FrontendMessage | pg.BackendMessage]) -> None:
    conn = pg.ServerConnection()
    frontend = _classes(pg.FrontendMessage)
    for step in steps:
        before = conn.state
        try:
            if type(step) in frontend and not isinstance(step, pg.CopyData | pg.CopyDone):
                conn.receive(typing.cast(pg.FrontendMessage, step))
            else:
                conn.send(typing.cast(pg.BackendMessage, step))
        except pg.ProtocolError:
            assert conn.state is before
        assert isinstance(conn.state, State)


# --- transaction status ----------------------------------------------------------------------------------


def test_transaction_tracker() -> None:
    tracker = pg.TransactionTracker()
    assert tracker.status == "I"
    assert tracker.local_error() == "I"  # outside a block, an error leaves the session idle
    assert tracker.observe(pg.CommandComplete("BEGIN")) == "T"
    assert tracker.observe(pg.DataRow((b"1",))) == "T"
    assert tracker.observe(ERROR) == "E"
    assert tracker.observe(pg.CommandComplete("ROLLBACK")) == "I"
    assert tracker.observe(pg.CommandComplete("START TRANSACTION")) == "T"
    assert tracker.observe(FATAL) == "T"  # the session ends; no status to report
    assert tracker.local_error() == "E"
    assert tracker.ready_for_query() == pg.ReadyForQuery("E")
    assert tracker.observe(pg.ReadyForQuery("T")) == "T"  # upstream's word is final
    assert tracker.observe(pg.CommandComplete("COMMIT")) == "I"
    assert tracker.observe(pg.CommandComplete("PREPARE TRANSACTION")) == "I"


def test_send_frames_is_send_frame_repeated() -> None:
    # A run of frames of one type (the relay's buffered DataRows) goes through the state table in one call:
    # from every state, for every backend type, the same end state or the same refusal as frame by frame.
    from gateway.pgwire.states import BACKEND_TYPE_BY_CODE

    for state in State:
        for code in BACKEND_TYPE_BY_CODE:
            for count in (1, 2, 3):
                one_by_one, batched = pg.ServerConnection(state), pg.ServerConnection(state)
                try:
                    for _ in range(count):
                        one_by_one.send_frame(code)
                    expected: State | type[Exception] = one_by_one.state
                except pg.ProtocolError:
                    expected = pg.ProtocolError
                try:
                    got: State | type[Exception] = batched.send_frames(code, count)
                except pg.ProtocolError:
                    got = pg.ProtocolError
                assert got == expected, (state, bytes((code,)), count)
