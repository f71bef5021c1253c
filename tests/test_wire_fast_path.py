"""The wire fast path (a lone simple Query answered from the socket callbacks) keeps order, flow and fail-closed."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg
import pytest

from gateway.pgwire.backend import CommandComplete, DataRow, ErrorResponse, ReadyForQuery
from gateway.pgwire.frontend import Query
from gateway.pgwire.parser import BackendParser
from identity.roles import Role
from tests import environment
from tests import services as svc
from tests.factories import make_agent, make_user


def _dsn(port: int) -> str:
    agent, token = make_agent(make_user(Role.ENGINEER))
    return f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{port}/clinic"


@contextmanager
def raw_session(dsn: str) -> Iterator[socket.socket]:
    """A signed-in connection (psycopg does SCRAM) whose socket the test then drives byte by byte."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        sock = socket.socket(fileno=conn.pgconn.socket)
        sock.settimeout(15)
        try:
            yield sock
        finally:
            sock.detach()


def read_until_ready(sock: socket.socket, parser: BackendParser, count: int = 1, pause: float = 0.0) -> list[object]:
    """Read replies until ``count`` ReadyForQuery; with ``pause``, read slowly, in small pieces."""
    replies: list[object] = []
    while sum(isinstance(reply, ReadyForQuery) for reply in replies) < count:
        chunk = sock.recv(4096 if pause else 65536)
        if not chunk:
            break
        parser.feed(chunk)
        replies.extend(parser.messages())
        if pause:
            time.sleep(pause)
    return replies


def test_a_query_sent_while_a_fast_one_is_answered_waits_its_turn(services) -> None:  # type: ignore[no-untyped-def]
    """The second query is one the gateway answers itself at once (empty): it must still come second."""
    first = "SELECT count(*) FROM generate_series(1, 3000000)"  # a few hundred milliseconds upstream
    with raw_session(_dsn(services.gateway_port)) as sock:
        parser = BackendParser()
        sock.sendall(Query(first).encode())  # the decision is cached from now on: alone, it takes the fast path
        read_until_ready(sock, parser)
        for _ in range(3):
            sock.sendall(Query(first).encode())
            time.sleep(0.05)  # read alone by the gateway: the fast path
            sock.sendall(Query("").encode())  # arrives while the first runs, through the client loop
            replies = read_until_ready(sock, parser, count=2)
            kinds = [type(reply).__name__ for reply in replies]
            assert kinds == [
                "RowDescription",
                "DataRow",
                "CommandComplete",
                "ReadyForQuery",
                "EmptyQueryResponse",
                "ReadyForQuery",
            ]


def test_a_large_result_to_a_slow_reader_arrives_whole_and_in_order(services) -> None:  # type: ignore[no-untyped-def]
    """About 20 MB: more than the sockets hold, so the gateway must stop reading upstream and resume later."""
    sql = "SELECT n, repeat('x', 1000) AS filler FROM generate_series(1, 20000) AS n"
    with raw_session(_dsn(services.gateway_port)) as sock:
        parser = BackendParser()
        sock.sendall(Query(sql).encode())
        read_until_ready(sock, parser)  # the decision is cached now
        sock.sendall(Query(sql).encode())  # fast path
        time.sleep(1.0)  # the client reads nothing for a while: every buffer on the way fills up
        replies = read_until_ready(sock, parser, pause=0.0002)
    rows = [reply.values for reply in replies if isinstance(reply, DataRow)]
    assert [int(row[0]) for row in rows] == list(range(1, 20001))  # type: ignore[arg-type]
    assert all(row[1] == b"x" * 1000 for row in rows)
    assert [reply.tag for reply in replies if isinstance(reply, CommandComplete)] == ["SELECT 20000"]


@pytest.fixture(scope="module")
def strict_gateway(target, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A gateway that refuses new reads once its journal is one second behind the event table."""
    state = tmp_path_factory.mktemp("strict-journal")
    service, port = svc.gateway(
        target.read_url, state, name="strict-gateway", extra_env={"AUDIT_JOURNAL_MAX_LAG_SECONDS": "1"}
    )
    yield port
    service.stop()


def test_when_the_audit_table_stops_taking_records_results_are_withheld(strict_gateway) -> None:  # type: ignore[no-untyped-def]
    sql = "SELECT code FROM diagnosis_codes ORDER BY code LIMIT 1"
    with raw_session(_dsn(strict_gateway)) as sock:
        parser = BackendParser()
        sock.sendall(Query(sql).encode())
        assert any(isinstance(r, DataRow) for r in read_until_ready(sock, parser))
        blocker = psycopg.connect(environment.db_url(environment.CONTROL_DB))
        try:
            # The shipper's cursor update now waits for this lock: nothing more reaches the event table.
            blocker.execute("LOCK TABLE audit_journalcursor IN ACCESS EXCLUSIVE MODE")
            sock.sendall(Query(sql).encode())  # durable in the journal (lag still small): answered
            assert any(isinstance(r, DataRow) for r in read_until_ready(sock, parser))
            time.sleep(2.5)
            sock.sendall(Query(sql).encode())  # the journal is now too far behind: no result, session ends
            replies = read_until_ready(sock, parser)
            assert not any(isinstance(r, DataRow) for r in replies)
            errors = [r for r in replies if isinstance(r, ErrorResponse)]
            assert errors and errors[-1].fields["C"] == "58000" and errors[-1].fields["S"] == "FATAL"
        finally:
            blocker.rollback()
            blocker.close()
    deadline = time.monotonic() + 15  # it serves again once shipping resumes
    while True:
        try:
            with psycopg.connect(_dsn(strict_gateway), autocommit=True) as conn:
                assert conn.execute(sql).fetchone() is not None
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
