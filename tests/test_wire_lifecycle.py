"""The life of wire sessions (gateway/wire/lifecycle.py, sign_in.py, server.py): the per-agent session cap,
revocation ending open sessions, shutdown, faults at sign-in, and an abandoned wait for approval. Real gateway
processes, real clients, real faults (a cut network path to the control plane, a missing target database);
the upstream side is observed in PostgreSQL's own pg_stat_activity."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import quote

import asyncpg
import psutil
import psycopg
import pytest
from django.utils import timezone

from approvals.models import Status, Ticket
from audit.models import AuditEvent, EventKind
from gateway.pgwire.backend import ErrorResponse
from gateway.pgwire.parser import BackendParser
from identity.models import Agent
from identity.roles import Role
from tests import environment
from tests import services as svc
from tests.factories import make_agent, make_user
from tests.services import CuttableProxy, wait_until


def _dsn(agent: Agent, token: str, port: int, **options: str) -> str:
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{port}/clinic"
    if options:
        dsn += "?" + "&".join(f"{key}={quote(value)}" for key, value in options.items())
    return dsn


def _new_agent(port: int) -> tuple[Agent, str]:
    agent, token = make_agent(make_user(Role.ENGINEER))
    return agent, _dsn(agent, token, port)


def _upstream_pids(services, agent: Agent) -> list[int]:  # type: ignore[no-untyped-def]
    """The agent's upstream connections, as PostgreSQL sees them (application_name names the agent)."""
    with psycopg.connect(services.target.owner_url) as owner:
        rows = owner.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND (application_name = %s OR application_name LIKE %s)",
            (f"phigate-wire/{agent.name}", f"phigate-wire/{agent.name}/%"),
        ).fetchall()
    return [row[0] for row in rows]


def _read_until_closed(conn: psycopg.Connection, timeout: float) -> list[object]:  # type: ignore[type-arg]
    """What the gateway sends on a signed-in connection until it closes it, read raw off the socket."""
    sock = socket.socket(fileno=conn.pgconn.socket)
    data = b""
    try:
        sock.settimeout(timeout)
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := sock.recv(65536):
                data += chunk
    finally:
        sock.detach()
    parser = BackendParser()
    parser.feed(data)
    return list(parser.messages())


def _fatal(messages: list[object]) -> ErrorResponse:
    assert messages and isinstance(messages[-1], ErrorResponse), messages
    error = messages[-1]
    assert error.fields["S"] == "FATAL"
    return error


# ---------------------------------------------------------------------------------------------- session cap


@pytest.fixture(scope="module")
def capped_gateway(services) -> Iterator[int]:  # type: ignore[no-untyped-def]
    process, port = svc.gateway(
        services.target.read_url,
        services.log_dir,
        name="gateway-capped",
        extra_env={"GATEWAY_MAX_SESSIONS_PER_AGENT": "2", "AUDIT_JOURNAL_DIR": ""},
    )
    yield port
    process.stop()


def test_sessions_beyond_the_cap_are_refused_like_postgresql(services, capped_gateway: int) -> None:  # type: ignore[no-untyped-def]
    agent, dsn = _new_agent(capped_gateway)
    first, second = psycopg.connect(dsn, autocommit=True), psycopg.connect(dsn, autocommit=True)
    try:
        with pytest.raises(psycopg.OperationalError, match=f'too many connections for role "{agent.name}"'):
            psycopg.connect(dsn, connect_timeout=10)

        async def with_asyncpg() -> None:
            await asyncpg.connect(dsn)

        with pytest.raises(asyncpg.TooManyConnectionsError) as refused:
            asyncio.run(with_asyncpg())
        assert refused.value.sqlstate == "53300"
        assert len(_upstream_pids(services, agent)) == 2  # the refused ones never reached the target
        _other, other_dsn = _new_agent(capped_gateway)  # the cap is per agent
        psycopg.connect(other_dsn).close()
        events = AuditEvent.objects.filter(kind=EventKind.AUTH_FAILED, agent_id=agent.pk)
        assert events.count() == 2
        assert all("too many connections" in event.summary and event.actor_id == agent.owner_id for event in events)
        assert first.execute("SELECT 1").fetchone() == (1,)
    finally:
        first.close()
    wait_until(lambda: len(_upstream_pids(services, agent)) == 1, 10, what="the closed session to be released")
    with psycopg.connect(dsn, autocommit=True) as third:  # a seat freed is a seat to take
        assert third.execute("SELECT 3").fetchone() == (3,)
    second.close()


# ---------------------------------------------------------------------------------------------- revocation


@pytest.mark.parametrize("how", ["revoked", "expired", "owner deactivated"])
def test_revocation_ends_open_sessions_within_a_second(services, how: str) -> None:  # type: ignore[no-untyped-def]
    agent, dsn = _new_agent(services.gateway_port)
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert len(_upstream_pids(services, agent)) == 1
        now = timezone.now()
        started = time.monotonic()
        if how == "revoked":
            Agent.objects.filter(pk=agent.pk).update(revoked_at=now)
        elif how == "expired":
            Agent.objects.filter(pk=agent.pk).update(created_at=now - timedelta(days=1), expires_at=now)
        else:
            type(agent.owner).objects.filter(pk=agent.owner_id).update(is_active=False)
        error = _fatal(_read_until_closed(conn, timeout=5))
        elapsed = time.monotonic() - started
        assert elapsed < 1.5, elapsed
        assert error.fields["C"] == "57P01" and agent.name in error.fields["M"]
        wait_until(lambda: not _upstream_pids(services, agent), 2, what="the upstream connection to close")
        ended = AuditEvent.objects.filter(kind=EventKind.AUTH_FAILED, agent_id=agent.pk, details__session_ended=True)
        wait_until(ended.exists, 5, what="the end of the session to be audited")
        assert ended.count() == 1 and ended.get().actor_id == agent.owner_id and how.split()[0] in ended.get().summary
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------- shutdown


def test_shutdown_tells_every_session_and_lets_statements_finish(services) -> None:  # type: ignore[no-untyped-def]
    process, port = svc.gateway(services.target.read_url, services.log_dir, name="gateway-shutdown")
    try:
        _agent, dsn = _new_agent(port)
        idle = psycopg.connect(dsn, autocommit=True)
        busy = psycopg.connect(dsn, autocommit=True)
        outcome: dict[str, object] = {}

        def long_statement() -> None:
            try:
                outcome["rows"] = busy.execute("SELECT count(*) FROM generate_series(1, 15000000)").fetchone()
            except Exception as exc:  # reported below
                outcome["error"] = exc

        worker = threading.Thread(target=long_statement)
        worker.start()
        time.sleep(0.3)  # the statement is running
        stopped_at = time.monotonic()
        assert process.process is not None
        os.kill(process.process.pid, signal.SIGTERM)
        error = _fatal(_read_until_closed(idle, timeout=10))
        assert error.fields["C"] == "57P01"
        assert error.fields["M"] == "terminating connection due to administrator command"
        worker.join(10)
        assert outcome.get("rows") == (15000000,), outcome  # the statement in flight finished within the grace
        assert _fatal(_read_until_closed(busy, timeout=10)).fields["C"] == "57P01"
        process.process.wait(timeout=15)
        assert time.monotonic() - stopped_at < 12
        idle.close()
        busy.close()
    finally:
        process.stop()


# ----------------------------------------------------------------------------------------- faults at sign-in


def test_control_plane_failure_at_sign_in_is_answered(services) -> None:  # type: ignore[no-untyped-def]
    proxy = CuttableProxy(5432)
    control_plane = environment.db_url(environment.CONTROL_DB).replace(":5432/", f":{proxy.port}/")
    process, port = svc.gateway(
        services.target.read_url,
        services.log_dir,
        name="gateway-control-plane",
        extra_env={"DATABASE_URL": control_plane, "AUDIT_JOURNAL_DIR": ""},
    )
    try:
        _agent, dsn = _new_agent(port)
        psycopg.connect(dsn, connect_timeout=10).close()
        proxy.cut()
        started = time.monotonic()

        async def with_asyncpg() -> None:
            await asyncpg.connect(dsn, timeout=10)

        with pytest.raises(asyncpg.PostgresError) as refused:
            asyncio.run(with_asyncpg())
        assert refused.value.sqlstate == "08006" and "control plane is unavailable" in str(refused.value)
        with pytest.raises(psycopg.OperationalError, match="control plane is unavailable"):
            psycopg.connect(dsn, connect_timeout=10)
        assert time.monotonic() - started < 10  # answered, not left to time out
        proxy.up = True
        wait_until(lambda: _connects(dsn), 10, what="sign-in to work again once the control plane is back")
    finally:
        process.stop()
        proxy.close()


def test_control_plane_failure_at_a_decision_is_answered(services) -> None:  # type: ignore[no-untyped-def]
    """A statement that needs a new decision while the control plane is down: FATAL 08006 and a closed socket
    (nothing can be decided or audited), never a silently cut connection."""
    proxy = CuttableProxy(5432)
    control_plane = environment.db_url(environment.CONTROL_DB).replace(":5432/", f":{proxy.port}/")
    process, port = svc.gateway(
        services.target.read_url,
        services.log_dir,
        name="gateway-control-plane-decision",
        extra_env={"DATABASE_URL": control_plane, "AUDIT_JOURNAL_DIR": ""},
    )
    try:
        _agent, dsn = _new_agent(port)
        with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            proxy.cut()
            with pytest.raises(psycopg.OperationalError) as failed:
                conn.execute("SELECT label FROM scratch WHERE id = 3")
            assert failed.value.sqlstate == "08006" and "control plane is unavailable" in str(failed.value)
            assert conn.closed or conn.broken
    finally:
        proxy.up = True
        process.stop()
        proxy.close()


def _connects(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.OperationalError:
        return False
    return True


def _close_wait_to_postgres(pid: int) -> int:
    return sum(
        1
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.status == psutil.CONN_CLOSE_WAIT and conn.raddr and conn.raddr.port == 5432
    )


def test_upstream_failure_at_sign_in_is_answered_with_its_sqlstate(services) -> None:  # type: ignore[no-untyped-def]
    missing = services.target.read_url.replace(environment.TARGET_DB, f"missing_{environment.RUN_ID}")
    no_journal = {"AUDIT_JOURNAL_DIR": ""}
    process, port = svc.gateway(missing, services.log_dir, name="gateway-no-target", extra_env=no_journal)
    try:
        _agent, dsn = _new_agent(port)

        async def with_asyncpg() -> None:
            await asyncpg.connect(dsn, timeout=10)

        for _ in range(5):
            with pytest.raises(asyncpg.InvalidCatalogNameError) as refused:  # 3D000, the target's own answer
                asyncio.run(with_asyncpg())
            assert "target database" in str(refused.value)
        with pytest.raises(psycopg.OperationalError, match="does not exist"):
            psycopg.connect(dsn, connect_timeout=10)
        assert process.process is not None
        time.sleep(0.3)
        assert _close_wait_to_postgres(process.process.pid) == 0  # every failed upstream socket was closed
    finally:
        process.stop()


def test_unreachable_target_is_answered(services) -> None:  # type: ignore[no-untyped-def]
    unreachable = services.target.read_url.replace(":5432/", f":{svc.free_port()}/")
    no_journal = {"AUDIT_JOURNAL_DIR": ""}
    process, port = svc.gateway(unreachable, services.log_dir, name="gateway-unreachable", extra_env=no_journal)
    try:
        _, dsn = _new_agent(port)
        with pytest.raises(psycopg.OperationalError, match="cannot reach the target database"):
            psycopg.connect(dsn, connect_timeout=10)
    finally:
        process.stop()


# ---------------------------------------------------------------------------------------- abandoned waits


def test_a_wait_whose_client_left_releases_its_upstream_and_ticket(services) -> None:  # type: ignore[no-untyped-def]
    agent, token = make_agent(make_user(Role.ENGINEER))
    dsn = _dsn(agent, token, services.gateway_port, options="-c gateway.approval=wait")
    conn = psycopg.connect(dsn, autocommit=True)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    failed: list[BaseException] = []

    def held_statement() -> None:
        try:
            conn.execute("DELETE FROM scratch WHERE id = 47")
        except Exception as exc:  # the client's own end was shut: expected
            failed.append(exc)

    worker = threading.Thread(target=held_statement)
    worker.start()
    ticket = wait_until(
        lambda: Ticket.objects.filter(agent=agent, status=Status.PENDING).first(), 20, what="the ticket"
    )
    assert len(_upstream_pids(services, agent)) == 1
    time.sleep(0.3)  # the session is in its wait loop
    gone = socket.socket(fileno=os.dup(conn.pgconn.socket))
    gone.shutdown(socket.SHUT_RDWR)  # the client goes away mid-wait
    gone.close()
    started = time.monotonic()
    wait_until(lambda: not _upstream_pids(services, agent), 3, interval=0.05, what="the upstream to be released")
    assert time.monotonic() - started < 1.5
    wait_until(lambda: Ticket.objects.get(pk=ticket.pk).status == Status.CANCELLED, 5, what="the ticket cancelled")
    worker.join(10)
    conn.close()
    assert failed and not worker.is_alive()


def test_revocation_during_a_wait_ends_the_session_and_frees_its_seat(services, capped_gateway: int) -> None:  # type: ignore[no-untyped-def]
    agent, token = make_agent(make_user(Role.ENGINEER))
    dsn = _dsn(agent, token, capped_gateway)
    conn = psycopg.connect(_dsn(agent, token, capped_gateway, options="-c gateway.approval=wait"), autocommit=True)
    failed: list[BaseException] = []

    def held_statement() -> None:
        try:
            conn.execute("DELETE FROM scratch WHERE id = 46")
        except Exception as exc:
            failed.append(exc)

    worker = threading.Thread(target=held_statement)
    worker.start()
    ticket = wait_until(
        lambda: Ticket.objects.filter(agent=agent, status=Status.PENDING).first(), 20, what="the ticket"
    )
    Agent.objects.filter(pk=agent.pk).update(revoked_at=timezone.now())
    worker.join(5)
    assert not worker.is_alive() and failed
    assert getattr(failed[0], "sqlstate", None) == "57P01" and "revoked" in str(failed[0])
    conn.close()
    wait_until(lambda: not _upstream_pids(services, agent), 2, what="the upstream connection to close")
    assert Ticket.objects.get(pk=ticket.pk).status == Status.PENDING  # left to its reviewers
    Agent.objects.filter(pk=agent.pk).update(revoked_at=None)
    time.sleep(0.2)
    # Both seats are free again: the waiting session's task ended with it (it does not poll its ticket on).
    with psycopg.connect(dsn, connect_timeout=10) as first, psycopg.connect(dsn, connect_timeout=10) as second:
        assert first.execute("SELECT 1").fetchone() == second.execute("SELECT 1").fetchone() == (1,)
