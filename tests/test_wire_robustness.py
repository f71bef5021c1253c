"""A misbehaving client gets a protocol ErrorResponse and is disconnected; nobody else notices."""

from __future__ import annotations

import socket
import struct
import time
from datetime import timedelta
from urllib.parse import quote

import psycopg
import pytest
from django.utils import timezone

from gateway.pgwire.backend import ErrorResponse
from gateway.pgwire.parser import BackendParser
from identity.models import Agent
from identity.roles import Role
from tests.factories import make_agent, make_user


@pytest.fixture
def agent(services):  # type: ignore[no-untyped-def]
    agent, token = make_agent(make_user(Role.ENGINEER))
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    return {"agent": agent, "token": token, "dsn": dsn, "port": services.gateway_port}


def raw_exchange(port: int, payload: bytes, timeout: float = 10) -> list[object]:
    """Send bytes, read until the gateway closes the connection, return the decoded replies."""
    parser = BackendParser()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            parser.feed(chunk)
    return list(parser.messages())


def test_gss_encryption_is_declined_then_startup_continues(agent) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", agent["port"]), timeout=10) as sock:
        sock.sendall(struct.pack("!II", 8, 80877104))
        assert sock.recv(1) == b"N"


@pytest.mark.parametrize(
    "payload",
    [
        struct.pack("!I", 3),  # startup length below the minimum
        struct.pack("!I", 10_000_000) + b"x" * 64,  # absurd startup length: refused without buffering it
        struct.pack("!II", 8, 12345),  # unknown protocol version
        b"\x00\x00\x00\x0d\x00\x03\x00\x00user\x00",  # a parameter name with no value or terminator
    ],
)
def test_malformed_startup_gets_an_error_and_a_disconnect(agent, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    replies = raw_exchange(agent["port"], payload)
    assert replies and isinstance(replies[-1], ErrorResponse)
    assert replies[-1].fields["S"] == "FATAL"


def test_garbage_after_sign_in_gets_an_error_and_others_are_unaffected(agent) -> None:  # type: ignore[no-untyped-def]
    bystander = psycopg.connect(agent["dsn"], autocommit=True)
    try:
        assert bystander.execute("SELECT 1").fetchone() == (1,)
        with psycopg.connect(agent["dsn"], autocommit=True) as victim:
            sock = socket.socket(fileno=victim.pgconn.socket)  # write raw garbage on the signed-in socket
            try:
                sock.sendall(b"Q\xff\xff\xff\xff")  # a Query claiming a 4 GiB body
                sock.settimeout(10)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            finally:
                sock.detach()
            parser = BackendParser()
            parser.feed(data)
            replies = list(parser.messages())
            assert isinstance(replies[-1], ErrorResponse) and replies[-1].fields["C"] in {"08P01", "54000"}
        assert bystander.execute("SELECT 2").fetchone() == (2,)
    finally:
        bystander.close()


def test_revoked_and_expired_agents_cannot_connect(agent) -> None:  # type: ignore[no-untyped-def]
    Agent.objects.filter(pk=agent["agent"].pk).update(revoked_at=timezone.now())
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(agent["dsn"], connect_timeout=10)
    owner = make_user(Role.ENGINEER)
    expiring, token = Agent.issue(owner=owner, name=f"expiring-{owner.pk}", expires_in_days=1)
    dsn = f"postgresql://{expiring.name}:{quote(token, safe='')}@127.0.0.1:{agent['port']}/clinic"
    psycopg.connect(dsn, connect_timeout=10).close()  # valid today
    now = timezone.now()  # the gateway runs on the real clock: backdate the agent rather than travel
    Agent.objects.filter(pk=expiring.pk).update(
        created_at=now - timedelta(days=2), expires_at=now - timedelta(seconds=1)
    )
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn, connect_timeout=10)


def test_repeated_failures_are_slowed_down(agent) -> None:  # type: ignore[no-untyped-def]
    bad = agent["dsn"].replace(quote(agent["token"], safe=""), "pga_guess")
    timings = []
    for _ in range(5):
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(bad, connect_timeout=30)
        timings.append(time.monotonic() - started)
    assert max(timings[:3]) < 1.0  # the first few fail fast
    assert timings[3] >= 1.0 and timings[4] >= 2.0  # then each costs more
    started = time.monotonic()
    psycopg.connect(agent["dsn"], connect_timeout=10).close()  # the right token is not slowed
    assert time.monotonic() - started < 1.0


def test_names_that_failed_once_are_forgotten_after_their_window() -> None:
    """A scanner's made-up names each fail once: the throttle's table must not keep them all (issue 15's soak)."""
    from gateway.wire.server import FailureThrottle

    throttle = FailureThrottle(window_seconds=0.2)
    for n in range(3000):
        assert throttle(f"stranger-{n}", "203.0.113.7") == 0.0
    time.sleep(0.3)
    for n in range(3000, 6000):
        throttle(f"stranger-{n}", "203.0.113.7")
    assert len(throttle._failures) <= 3000  # the first names' window has passed: swept
    for _ in range(4):
        delay = throttle("regular", "203.0.113.8")
    assert delay == 1.0  # a name failing within its window is still slowed down


def test_pipelined_statements_keep_their_order(agent) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(agent["dsn"], autocommit=True) as conn:
        with conn.pipeline():
            cursors = [
                conn.execute("SELECT %s::int AS n, label FROM scratch WHERE id = %s", (i, i)) for i in range(1, 21)
            ]
            held = conn.execute("SELECT 'after'")
        assert [cursor.fetchone()[0] for cursor in cursors] == list(range(1, 21))  # type: ignore[index]
        assert held.fetchone() == ("after",)


def test_refusal_inside_a_pipeline_skips_to_sync_like_postgresql(agent) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(agent["dsn"], autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
            conn.execute("SELECT 1")
            conn.execute("SELECT pg_read_file('/etc/hostname')")
            conn.execute("SELECT 3")
        assert conn.execute("SELECT 4").fetchone() == (4,)
