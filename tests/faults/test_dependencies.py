"""Every process survives its dependencies going away and coming back, without a restart (issue 15).

Real processes on a private Redis that the tests kill, hang and restart (never the machine's shared one), a web
process whose control plane runs through a TCP relay the tests cut, and control-plane backends of the gateway
terminated with ``pg_terminate_backend`` on the shared cluster (connections lost, the server untouched).

Seen on main before: the gateway process exited when Redis restarted or hung (``brpop`` unguarded), taking every
wire session with it; the web gave up on a read after redis-py's 5 s socket timeout (HTML 500) while the gateway
ran it to completion, and the gateway ran requests whose caller had gone; a Redis or control-plane outage was an
HTML 500; a decision thread whose control-plane connection was terminated failed every statement until the
gateway restarted; no process said which dependency was down.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import psutil
import psycopg
import pytest
import redis

from audit.models import AuditEvent, EventKind
from audit.recorder import Context
from gateway.rpc import GatewayUnavailable, call_gateway
from identity.models import Agent
from identity.principal import Principal
from identity.roles import Role
from tests import environment
from tests import services as svc
from tests.conftest import Target
from tests.factories import make_agent, make_user, scratch_row
from tests.services import CuttableProxy, wait_until

pytestmark = pytest.mark.timeout(120)  # each test, its fixtures included (the first one starts the processes)

SILENCE_BOUND_SECONDS = 4  # the gateway's CONTROL_PLANE_TIMEOUT_SECONDS and connect timeout here


# ------------------------------------------------------------------------------------------------ processes


class PrivateRedis:
    """A redis-server of the test's own, on a free port, that can be killed, hung (SIGSTOP) and started again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = svc.free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=svc.die_with_the_test_run,
        )
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        wait_until(lambda: _pings(client), 10, what="the private redis-server to answer")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)

    def hang(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class Stack:
    target: Target
    redis: PrivateRedis
    control_plane_relay: CuttableProxy  # the web's path to its control plane
    gateway_relay: CuttableProxy  # the gateway's
    log_dir: Path
    gateway: svc.Service
    gateway_port: int
    gateway_health_port: int
    worker: svc.Service
    worker_name: str
    web_port: int
    web: svc.Service | None = None

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start_web(self) -> None:
        relayed = _relayed_control_plane(self.control_plane_relay)
        self.web, _ = svc.web(
            self.log_dir,
            name="deps-web",
            port=self.web_port,
            extra_env={"REDIS_URL": self.redis.url(), "DATABASE_URL": relayed, "LOG_LEVEL": "INFO"},
        )


def _relayed_control_plane(relay: CuttableProxy) -> str:
    return environment.db_url(environment.CONTROL_DB).replace(":5432/", f":{relay.port}/")


def _start_gateway(target: Target, redis_url: str, relay: CuttableProxy, log_dir: Path) -> tuple[svc.Service, int, int]:
    port, health_port = svc.free_port(), svc.free_port()
    service = svc.Service(
        "deps-gateway",
        [sys.executable, "manage.py", "gateway", "--host", "127.0.0.1", "--port", str(port), "--concurrency", "1"],
        {
            f"DATASOURCE_{environment.DATASOURCE.upper()}_READ_URL": target.read_url,
            "AUDIT_JOURNAL_DIR": str(log_dir / "deps-gateway-journal"),
            "REDIS_URL": redis_url,
            "DATABASE_URL": _relayed_control_plane(relay),
            "GATEWAY_HEALTH_PORT": str(health_port),
            "LOG_LEVEL": "INFO",
            "CONTROL_PLANE_TIMEOUT_SECONDS": str(SILENCE_BOUND_SECONDS),
            "DATABASE_CONNECT_TIMEOUT_SECONDS": str(SILENCE_BOUND_SECONDS),
        },
        log_dir,
    ).start()
    wait_until(lambda: svc.port_open(port) or not service.alive(), 30, what="the gateway to listen")
    assert service.alive(), service.log_tail()
    return service, port, health_port


def _start_worker(target: Target, redis_url: str, log_dir: Path) -> tuple[svc.Service, str]:
    name = f"deps-worker-{environment.RUN_ID}"
    service = svc.Service(
        "deps-worker",
        [
            *(sys.executable, "-m", "celery", "-A", "phigate", "worker", "--loglevel=INFO", "--concurrency=1"),
            *("-n", f"{name}@%h", "--without-gossip", "--without-mingle"),
        ],
        {f"DATASOURCE_{environment.DATASOURCE.upper()}_WRITE_URL": target.write_url, "REDIS_URL": redis_url},
        log_dir,
    ).start()
    return service, name


@pytest.fixture(scope="module")
def stack(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("dependency-faults")
    private = PrivateRedis(log_dir)
    relay, gateway_relay = CuttableProxy(5432), CuttableProxy(5432)
    started: list[svc.Service] = []
    running: Stack | None = None
    try:
        private.start()
        gateway, gateway_port, health_port = _start_gateway(target, private.url(), gateway_relay, log_dir)
        started.append(gateway)
        worker, worker_name = _start_worker(target, private.url(), log_dir)
        started.append(worker)
        running = Stack(
            target,
            private,
            relay,
            gateway_relay,
            log_dir,
            gateway,
            gateway_port,
            health_port,
            worker,
            worker_name,
            svc.free_port(),
        )
        running.start_web()
        yield running
    finally:
        if running is not None and running.web is not None:
            started.append(running.web)
        for service in started:
            service.stop()
        private.kill()
        relay.close()
        gateway_relay.close()


# -------------------------------------------------------------------------------------------------- clients


def _dsn(agent: Agent, token: str, port: int, options: str = "") -> str:
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{port}/clinic"
    return dsn + (f"?options={quote(options)}" if options else "")


@dataclass(frozen=True)
class AgentCredentials:
    agent: Agent
    token: str


@pytest.fixture
def agent() -> AgentCredentials:
    created, token = make_agent(make_user(Role.ENGINEER))
    return AgentCredentials(created, token)


def _query(stack: Stack, credentials: AgentCredentials, sql: str, timeout: float = 60) -> httpx2.Response:
    with httpx2.Client(base_url=stack.web_url, timeout=timeout, trust_env=False) as http:
        return http.post(
            "/api/v1/queries",
            json={"datasource": "clinic", "sql": sql},
            headers={"Authorization": f"Bearer {credentials.token}"},
        )


def _get(url: str, **headers: str) -> httpx2.Response:
    with httpx2.Client(timeout=30, trust_env=False) as http:
        return http.get(url, headers=headers)


def _mcp_query(stack: Stack, credentials: AgentCredentials, sql: str) -> httpx2.Response:
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "query", "arguments": {"datasource": "clinic", "sql": sql}},
    }
    headers = {"Authorization": f"Bearer {credentials.token}", "Accept": "application/json, text/event-stream"}
    with httpx2.Client(base_url=stack.web_url, timeout=60, trust_env=False) as http:
        return http.post("/mcp", json=call, headers=headers)


def _assert_dependency_503(response: httpx2.Response, dependency: str) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert body["dependency"] == dependency and body["error"], body


def _readiness(url: str) -> tuple[int, dict[str, Any]]:
    response = _get(url)
    return response.status_code, response.json()


def _fault_lines(service: svc.Service, dependency: str, state: str) -> list[str]:
    text = service.log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if f"dependency={dependency} state={state}" in line]


def _rows(response: httpx2.Response) -> list[list[str]]:
    assert response.status_code == 200, (response.status_code, response.text[:500])
    body = response.json()
    assert body["status"] == "executed", body
    return [[str(value) for value in row] for row in body["rows"]]


# ------------------------------------------------------------------------------------------------------ Redis


def test_redis_restart_and_hang_keep_every_process_up_and_wire_sessions_serving(
    stack: Stack, agent: AgentCredentials
) -> None:
    wire = psycopg.connect(_dsn(agent.agent, agent.token, stack.gateway_port), autocommit=True)
    try:
        assert wire.execute("SELECT label FROM scratch WHERE id = 1").fetchone() == ("row 1",)
        assert _rows(_query(stack, agent, "SELECT label FROM scratch WHERE id = 2")) == [["row 2"]]
        held = _query(stack, agent, "DELETE FROM scratch WHERE id = 50")
        assert held.status_code == 202, held.text
        ticket = f"{stack.web_url}/api/v1/tickets/{held.json()['ticket']['id']}"

        stack.redis.hang()  # a Redis that stops answering: longer than every socket timeout involved
        try:
            time.sleep(7)
            assert stack.gateway.alive(), stack.gateway.log_tail()
            assert wire.execute("SELECT label AS hung FROM scratch WHERE id = 3").fetchone() == ("row 3",)
        finally:
            stack.redis.resume()
        wait_until(lambda: _query(stack, agent, "SELECT 1 AS after_hang").status_code == 200, 20, what="API back")

        stack.redis.kill()
        outage_started = time.monotonic()
        _assert_dependency_503(_query(stack, agent, "SELECT label FROM scratch WHERE id = 4"), "redis")
        _assert_dependency_503(_mcp_query(stack, agent, "SELECT label FROM scratch WHERE id = 4"), "redis")
        _assert_dependency_503(_get(f"{ticket}/wait?timeout=2", Authorization=f"Bearer {agent.token}"), "redis")
        assert _get(ticket, Authorization=f"Bearer {agent.token}").status_code == 200  # needs no Redis: answered
        # Wire sessions need no Redis: open ones keep serving, new decisions included, and new ones sign in.
        assert wire.execute("SELECT label AS during_outage FROM scratch WHERE id = 5").fetchone() == ("row 5",)
        with psycopg.connect(_dsn(agent.agent, agent.token, stack.gateway_port)) as fresh:
            assert fresh.execute("SELECT label FROM scratch WHERE id = 6").fetchone() == ("row 6",)
        # Each process says that Redis is what is down.
        status, gateway_ready = _readiness(f"http://127.0.0.1:{stack.gateway_health_port}/readyz")
        assert status == 503 and gateway_ready["down"] == ["redis"], gateway_ready
        assert gateway_ready["fronts"] == {"wire": "up", "api": "down"}, gateway_ready
        status, web_ready = _readiness(f"{stack.web_url}/readyz")
        assert status == 503 and "redis" in web_ready["down"], web_ready
        assert _get(f"{stack.web_url}/healthz").status_code == 200  # alive, only not ready
        assert _get(f"http://127.0.0.1:{stack.gateway_health_port}/healthz").status_code == 200
        worker_probe = _worker_health(stack)
        assert worker_probe.returncode == 1 and "redis" in json.loads(worker_probe.stdout)["down"]
        while time.monotonic() - outage_started < 6:  # several reconnection attempts, one log line
            time.sleep(0.5)
        for service in (stack.gateway, stack.web, stack.worker):
            assert service.alive(), service.log_tail()

        stack.redis.start()  # same port, empty: nothing survived the restart
        wait_until(lambda: _query(stack, agent, "SELECT 1 AS after_restart").status_code == 200, 20, what="API")
        assert _rows(_query(stack, agent, "SELECT label FROM scratch WHERE id = 7")) == [["row 7"]]
        assert wire.execute("SELECT label FROM scratch WHERE id = 8").fetchone() == ("row 8",)
        wait_until(lambda: _readiness(f"{stack.web_url}/readyz")[0] == 200, 10, what="web ready again")
        status, gateway_ready = _readiness(f"http://127.0.0.1:{stack.gateway_health_port}/readyz")
        assert status == 200 and gateway_ready["down"] == [], gateway_ready
        wait_until(lambda: _worker_health(stack).returncode == 0, 30, what="the worker to answer its probe again")
        # One structured line per change of state, not one per retry: the hang and the kill, then recovery.
        assert len(_fault_lines(stack.gateway, "redis", "down")) == 2, stack.gateway.log_tail(80)
        assert len(_fault_lines(stack.gateway, "redis", "up")) == 2, stack.gateway.log_tail(80)
        assert _fault_lines(stack.web, "redis", "down"), stack.web.log_tail(80)
    finally:
        wire.close()


def _worker_health(stack: Stack) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASOURCE_")}
    env |= {
        "REDIS_URL": stack.redis.url(),
        f"DATASOURCE_{environment.DATASOURCE.upper()}_WRITE_URL": stack.target.write_url,
    }
    return subprocess.run(
        [sys.executable, "manage.py", "worker_health", "--node", stack.worker_name, "--timeout", "2"],
        cwd=svc.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


# ------------------------------------------------------------------------------------------------- deadlines


@contextlib.contextmanager
def _scratch_locked(target: Target) -> Iterator[psycopg.Connection[Any]]:
    """Hold an ACCESS EXCLUSIVE lock on ``scratch``: any read of it waits, as long as the test wants."""
    with psycopg.connect(target.owner_url) as owner:
        owner.execute("LOCK TABLE scratch IN ACCESS EXCLUSIVE MODE")
        yield owner
        owner.rollback()


def _waiting_reads(target: Target, marker: str) -> list[int]:
    with psycopg.connect(target.owner_url, autocommit=True) as owner:
        rows = owner.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND state = 'active' AND query LIKE %s",
            (environment.READ_ROLE, f"%{marker}%"),
        ).fetchall()
    return [row[0] for row in rows]


def test_an_api_read_slower_than_any_socket_timeout_returns_its_rows(stack: Stack, agent: AgentCredentials) -> None:
    sql = "SELECT id, label FROM scratch WHERE id = 9"
    with _scratch_locked(stack.target) as owner:
        threading.Timer(11, owner.commit).start()  # the lock (and so the read) lasts 11 s
        started = time.monotonic()
        response = _query(stack, agent, sql)
    assert time.monotonic() - started > 6
    assert _rows(response) == [["9", "row 9"]]


def _abandoned_query(stack: Stack, credentials: AgentCredentials, sql: str) -> None:
    """A query whose web process is killed under it: the connection is cut, which is the point."""
    with contextlib.suppress(httpx2.HTTPError):
        _query(stack, credentials, sql)


def test_requests_whose_caller_is_gone_are_cancelled_or_never_run(stack: Stack, agent: AgentCredentials) -> None:
    running_sql = "SELECT id FROM scratch WHERE id = 11"
    queued_sql = "SELECT id FROM scratch WHERE id = 12"
    queue = redis.Redis.from_url(stack.redis.url())
    try:
        with _scratch_locked(stack.target) as owner:
            first = threading.Thread(target=_abandoned_query, args=(stack, agent, running_sql), daemon=True)
            first.start()
            wait_until(lambda: _waiting_reads(stack.target, "id = 11"), 15, what="the first read to wait on the lock")
            second = threading.Thread(target=_abandoned_query, args=(stack, agent, queued_sql), daemon=True)
            second.start()
            # The gateway runs one API statement at a time here: the second waits in the queue.
            wait_until(lambda: queue.llen("phigate:gateway:requests") == 1, 10, what="the second request queued")
            stack.web.kill()  # the caller of both is gone (kill -9 of the web process)
            # The running statement is cancelled soon after, not left to finish for nobody.
            wait_until(lambda: not _waiting_reads(stack.target, "id = 11"), 15, what="the orphaned read cancelled")
            owner.commit()
        time.sleep(3)  # the gateway is free again: it takes the queued request and must drop it
        assert queue.llen("phigate:gateway:requests") == 0
        statements = set(AuditEvent.objects.filter(agent_id=agent.agent.pk).values_list("statement", flat=True))
        assert queued_sql not in statements  # never run: not even decided and recorded
        kinds = list(AuditEvent.objects.filter(agent_id=agent.agent.pk, statement=running_sql).values_list("kind"))
        assert kinds == [(EventKind.QUERY_SUBMITTED,)]
        failed = AuditEvent.objects.filter(agent_id=agent.agent.pk, kind=EventKind.QUERY_FAILED)
        assert failed.count() == 1 and "cancel" in failed.get().summary
        assert not AuditEvent.objects.filter(agent_id=agent.agent.pk, kind=EventKind.QUERY_EXECUTED).exists()
    finally:
        queue.close()
        if not stack.web.alive():
            stack.start_web()
    assert _rows(_query(stack, agent, "SELECT id FROM scratch WHERE id = 13")) == [["13"]]


def test_a_read_never_outlives_its_callers_deadline(stack: Stack, agent: AgentCredentials) -> None:
    """The caller waits 4 s (the web side's own code, in process); the gateway bounds the read's statement timeout
    by that deadline, so the read stops and its failure comes back before the caller gives up."""
    client = redis.Redis.from_url(stack.redis.url())
    try:
        with _scratch_locked(stack.target):
            started = time.monotonic()
            outcome = call_gateway(
                client,
                principal=Principal.for_agent(agent.agent),
                datasource="clinic",
                sql="SELECT id FROM scratch WHERE id = 33",
                reason="",
                context=Context(front="http"),
                timeout_seconds=4,
            )
            assert time.monotonic() - started < 4.5
            assert outcome.status == "failed" and "statement timeout" in outcome.error, outcome
            assert not _waiting_reads(stack.target, "id = 33")  # nothing left running for nobody
    finally:
        client.close()


def test_a_request_whose_caller_gave_up_at_its_deadline_is_never_run(stack: Stack, agent: AgentCredentials) -> None:
    """The web side's own code (gateway.rpc.call_gateway) with a short wait, while the gateway is busy: the caller
    gives up at its deadline, and the gateway, free again later, drops the request instead of running it."""
    busy_sql, late_sql = "SELECT id FROM scratch WHERE id = 31", "SELECT id FROM scratch WHERE id = 32"
    client = redis.Redis.from_url(stack.redis.url())
    try:
        with _scratch_locked(stack.target) as owner:
            busy = threading.Thread(target=lambda: _query(stack, agent, busy_sql), daemon=True)
            busy.start()
            wait_until(lambda: _waiting_reads(stack.target, "id = 31"), 15, what="the gateway to be busy")
            started = time.monotonic()
            with pytest.raises(GatewayUnavailable):
                call_gateway(
                    client,
                    principal=Principal.for_agent(agent.agent),
                    datasource="clinic",
                    sql=late_sql,
                    reason="",
                    context=Context(front="http"),
                    timeout_seconds=2,
                )
            assert time.monotonic() - started < 5  # it gave up at its deadline, not later
            owner.commit()
        busy.join(30)
        wait_until(lambda: client.llen("phigate:gateway:requests") == 0, 10, what="the gateway to take the request")
        time.sleep(1)
    finally:
        client.close()
    statements = set(AuditEvent.objects.filter(agent_id=agent.agent.pk).values_list("statement", flat=True))
    assert busy_sql in statements and late_sql not in statements


# ---------------------------------------------------------------------------------------------- control plane


def test_web_control_plane_outage_is_a_503_for_the_api_and_a_branded_page(
    stack: Stack, agent: AgentCredentials
) -> None:
    assert _rows(_query(stack, agent, "SELECT id FROM scratch WHERE id = 14")) == [["14"]]
    stack.control_plane_relay.cut()
    try:
        _assert_dependency_503(_query(stack, agent, "SELECT id FROM scratch WHERE id = 15"), "control_plane")
        _assert_dependency_503(_mcp_query(stack, agent, "SELECT id FROM scratch WHERE id = 15"), "control_plane")
        # A signed-in browser: its session is read from the control plane.
        page = _get(f"{stack.web_url}/", Accept="text/html", Cookie="sessionid=" + "s" * 32)
        assert page.status_code == 503 and page.headers["content-type"].startswith("text/html"), page.text[:300]
        assert int(page.headers["retry-after"]) > 0
        assert "phigate" in page.text and "temporarily unavailable" in page.text
        status, ready = _readiness(f"{stack.web_url}/readyz")
        assert status == 503 and ready["down"] == ["control_plane"], ready
    finally:
        stack.control_plane_relay.up = True
    wait_until(lambda: _query(stack, agent, "SELECT id FROM scratch WHERE id = 16").status_code == 200, 20, what="API")
    assert _readiness(f"{stack.web_url}/readyz")[0] == 200
    assert len(_fault_lines(stack.web, "control_plane", "down")) >= 1, stack.web.log_tail(60)


def _gateway_control_plane_backends(stack: Stack) -> list[int]:
    """The gateway's own control-plane connections: the backends whose client is the relay's side towards them."""
    with stack.gateway_relay.lock:
        ports = {sock.getsockname()[1] for sock in stack.gateway_relay.sockets if _peer_port(sock) == 5432}
    with psycopg.connect(environment.ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE datname = %s", (environment.CONTROL_DB,)
        ).fetchall()
    return [pid for pid, port in rows if port in ports]


def _peer_port(sock: socket.socket) -> int | None:
    try:
        return int(sock.getpeername()[1])
    except OSError:
        return None


def test_the_gateways_control_plane_outage_is_answered_and_survived(stack: Stack, agent: AgentCredentials) -> None:
    """The gateway's link to its control plane is cut while the web's is fine: nothing can be decided or audited
    there, which the API says as a 503 naming the control plane and the wire as 08006; then it comes back."""
    dsn = _dsn(agent.agent, agent.token, stack.gateway_port)
    readyz = f"http://127.0.0.1:{stack.gateway_health_port}/readyz"
    down_lines = len(_fault_lines(stack.gateway, "control_plane", "down"))
    up_lines = len(_fault_lines(stack.gateway, "control_plane", "up"))
    wire = psycopg.connect(dsn, autocommit=True)
    try:
        assert wire.execute("SELECT label FROM scratch WHERE id = 40").fetchone() == ("row 40",)
        stack.gateway_relay.cut()
        try:
            _assert_dependency_503(_query(stack, agent, "SELECT label FROM scratch WHERE id = 41"), "control_plane")
            with pytest.raises(psycopg.OperationalError) as failed:  # a new decision cannot be made or audited
                wire.execute("SELECT label AS cut FROM scratch WHERE id = 42")
            assert failed.value.sqlstate == "08006", failed.value
            status, ready = _readiness(readyz)
            assert status == 503 and ready["down"] == ["control_plane"], ready
            assert ready["fronts"] == {"wire": "down", "api": "down"}, ready
            time.sleep(2)  # retries and watcher passes meanwhile: still one line for the outage, and no recovery
            assert len(_fault_lines(stack.gateway, "control_plane", "up")) == up_lines, stack.gateway.log_tail(60)
        finally:
            stack.gateway_relay.up = True
    finally:
        wire.close()
    back = "SELECT label FROM scratch WHERE id = 43"
    wait_until(lambda: _query(stack, agent, back).status_code == 200, 20, what="the API to answer again")
    with psycopg.connect(dsn, autocommit=True) as fresh:
        assert fresh.execute("SELECT label AS back FROM scratch WHERE id = 44").fetchone() == ("row 44",)
    status, ready = _readiness(readyz)
    assert status == 200, ready
    assert len(_fault_lines(stack.gateway, "control_plane", "down")) == down_lines + 1, stack.gateway.log_tail(60)
    assert len(_fault_lines(stack.gateway, "control_plane", "up")) == up_lines + 1, stack.gateway.log_tail(60)


def test_a_silent_control_plane_is_answered_within_its_bound_not_waited_for(
    stack: Stack, agent: AgentCredentials
) -> None:
    """The gateway's path to its control plane accepts and then passes nothing (a hung server, a black hole after
    the handshake). A statement that needs a decision, and a sign-in, each get 08006 within the bound, instead of
    waiting for the socket to give up minutes later; once the path flows again, the gateway serves."""
    dsn = _dsn(agent.agent, agent.token, stack.gateway_port)
    wire = psycopg.connect(dsn, autocommit=True)
    try:
        assert wire.execute("SELECT label FROM scratch WHERE id = 45").fetchone() == ("row 45",)
        stack.gateway_relay.stall()
        try:
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as failed:  # a new shape: a decision is needed
                wire.execute("SELECT label AS stalled FROM scratch WHERE id = 46")
            assert failed.value.sqlstate == "08006", failed.value
            assert time.monotonic() - started < SILENCE_BOUND_SECONDS + 5
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as refused:
                psycopg.connect(dsn, autocommit=True, connect_timeout=60).close()
            assert "control plane is unavailable" in str(refused.value), refused.value  # libpq keeps no SQLSTATE
            assert time.monotonic() - started < SILENCE_BOUND_SECONDS + 5
        finally:
            stack.gateway_relay.resume()
    finally:
        wire.close()

    def serves() -> bool:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as fresh:
                return fresh.execute("SELECT label AS flowing FROM scratch WHERE id = 47").fetchone() == ("row 47",)
        except psycopg.OperationalError:
            return False

    wait_until(serves, 30, what="the gateway to serve again")


def test_terminated_control_plane_connections_are_replaced(stack: Stack, agent: AgentCredentials) -> None:
    dsn = _dsn(agent.agent, agent.token, stack.gateway_port)
    sessions = [psycopg.connect(dsn, autocommit=True) for _ in range(3)]
    try:

        def decide_everywhere(tag: str) -> None:
            """Statements of new shapes (new decisions) from several sessions at once: several decision threads."""

            def run(index: int, conn: psycopg.Connection[Any]) -> None:
                for n in range(4):
                    row = conn.execute(f"SELECT label AS {tag}_{index}_{n} FROM scratch WHERE id = 20").fetchone()
                    assert row == ("row 20",)

            threads = [threading.Thread(target=run, args=(i, conn)) for i, conn in enumerate(sessions)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)

        decide_everywhere("before")
        backends = _gateway_control_plane_backends(stack)
        assert backends, "the gateway holds no control-plane connection to terminate"
        with psycopg.connect(environment.ADMIN_URL, autocommit=True) as admin:
            for pid in backends:
                admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # returns once it has ended
        for index, conn in enumerate(sessions):  # the next statement needing a decision succeeds, on every session
            for n in range(4):
                row = conn.execute(f"SELECT label AS after_{index}_{n} FROM scratch WHERE id = 21").fetchone()
                assert row == ("row 21",)
        assert _rows(_query(stack, agent, "SELECT label AS over_api FROM scratch WHERE id = 22")) == [["row 22"]]
        assert all(not conn.closed for conn in sessions)
    finally:
        for conn in sessions:
            conn.close()


# ------------------------------------------------------------------------------------------------- sockets


def test_failed_upstream_sign_ins_leave_no_socket_behind(stack: Stack, agent: AgentCredentials) -> None:
    assert stack.gateway.process is not None
    gateway = psutil.Process(stack.gateway.process.pid)

    def sockets() -> list[Any]:
        return [conn for conn in gateway.net_connections(kind="tcp") if conn.status != psutil.CONN_LISTEN]

    # The gateway lets DateStyle through (any value) and signs in upstream with it; PostgreSQL refuses the value
    # after authentication, with FATAL 22023, and closes: a failed upstream sign-in, whatever the credential.
    refused_upstream = _dsn(agent.agent, agent.token, stack.gateway_port, options="-c DateStyle=nonsense")

    def fail_to_sign_in(times: int) -> None:
        for _ in range(times):
            with pytest.raises(psycopg.OperationalError, match="target database: invalid value"):
                psycopg.connect(refused_upstream, connect_timeout=10)
        time.sleep(0.5)

    fail_to_sign_in(5)  # the sign-in threads hold their control-plane connections (one each) from here on
    before = sockets()
    fail_to_sign_in(30)
    after = sockets()
    seen = {(conn.laddr, conn.raddr) for conn in before}
    assert [c for c in after if c.status == psutil.CONN_CLOSE_WAIT and (c.laddr, c.raddr) not in seen] == []
    assert len(after) <= len(before) + 2, after  # a thread's connection or two may open meanwhile; not thirty


# ------------------------------------------------------------------------------------------ what counts as what


def test_only_faults_of_reaching_a_dependency_are_outages() -> None:
    from django.db import utils as db_utils

    from phigate import faults
    from phigate.outages import outage_of

    def wrapped(django_error: type[Exception], cause: Exception) -> Exception:
        error = django_error(str(cause))
        error.__cause__ = cause
        return error

    assert outage_of(redis.ConnectionError("Error 111 connecting")) == faults.REDIS
    assert outage_of(redis.TimeoutError("Timeout reading")) == faults.REDIS
    assert outage_of(RuntimeError("wrapped")) is None
    terminated = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    assert outage_of(wrapped(db_utils.OperationalError, terminated)) == faults.CONTROL_PLANE
    refused = psycopg.OperationalError("connection failed: Connection refused")  # no SQLSTATE: never connected
    assert outage_of(wrapped(db_utils.OperationalError, refused)) == faults.CONTROL_PLANE
    assert outage_of(db_utils.InterfaceError("connection already closed")) == faults.CONTROL_PLANE
    # A statement that failed on a live connection is a bug or a conflict, not an outage: still a 500 (or 409).
    cancelled = psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
    assert outage_of(wrapped(db_utils.OperationalError, cancelled)) is None
    duplicate = psycopg.errors.UniqueViolation("duplicate key value violates unique constraint")
    assert outage_of(wrapped(db_utils.IntegrityError, duplicate)) is None
    try:  # found through the chain of causes, as an outage inside a library's own exception
        try:
            raise redis.ConnectionError("Connection closed by server.")
        except redis.ConnectionError as inner:
            raise RuntimeError("enqueue failed") from inner
    except RuntimeError as outer:
        assert outage_of(outer) == faults.REDIS


def test_a_fault_is_one_line_per_change_of_state_without_credentials(caplog: pytest.LogCaptureFixture) -> None:
    from phigate.faults import DependencyState, describe

    state = DependencyState("test-dependency")
    with caplog.at_level("WARNING", logger="phigate.faults"):
        for _ in range(5):  # a dependency that stays away: retried five times, said once
            state.down(RuntimeError("connection to postgresql://reader:s3cret@db.internal:5432/x failed"))
        state.down("password=hunter2 host=db.internal: refused")
        state.up()
        state.up()
    lines = [record.getMessage() for record in caplog.records if record.name == "phigate.faults"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("dependency fault: dependency=test-dependency state=down error=")
    assert "RuntimeError" in lines[0] and "s3cret" not in lines[0] and "reader:***@" not in lines[0]
    assert lines[1].startswith("dependency fault: dependency=test-dependency state=up down_seconds=")
    assert describe("password=hunter2 host=db.internal: refused") == "password=*** host=db.internal: refused"


# ------------------------------------------------------------------------------------------ PostgreSQL restart


def _restart_postgresql() -> None:
    """Restart the machine's PostgreSQL cluster (fast mode: every backend of every process ends, and the server is
    gone until it is back). tests/faults run alone (``make test`` runs them after the rest), so nothing else is
    hurt; the cluster is the one DEVELOPERS.md names, started the way it says."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
        check=True,
        capture_output=True,
        timeout=90,
    )
    wait_until(_postgresql_answers, 60, what="PostgreSQL to accept connections again")


def _postgresql_answers() -> bool:
    try:
        with psycopg.connect(environment.ADMIN_URL, connect_timeout=2) as admin:
            return admin.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


def test_a_postgresql_restart_is_survived_by_every_process(stack: Stack, agent: AgentCredentials) -> None:
    """The server itself restarts: the gateway's upstream and control-plane connections, the web's and the worker's
    all die at once. An open wire session is told (never left hanging); then, with no process restarted, the API
    and new wire sessions serve, a ticket held before the restart is approved and executed once by the same
    worker, and the audit chain verifies."""
    from django.db import connections

    from approvals.models import Status, Ticket
    from identity.models import ApiToken

    dsn = _dsn(agent.agent, agent.token, stack.gateway_port)
    row = scratch_row("deleted by a ticket approved after a restart")
    wire = psycopg.connect(dsn, autocommit=True)
    try:
        assert wire.execute("SELECT label FROM scratch WHERE id = 9").fetchone() == ("row 9",)
        held = _query(stack, agent, f"DELETE FROM scratch WHERE id = {row}")
        assert held.status_code == 202, held.text
        ticket_id = held.json()["ticket"]["id"]

        _restart_postgresql()
        connections.close_all()  # this process's own ORM connection died with the server

        with pytest.raises(psycopg.Error):  # its upstream backend is gone: an error, not silence
            wire.execute("SELECT label AS after_restart FROM scratch WHERE id = 10").fetchone()
    finally:
        wire.close()

    wait_until(lambda: _query(stack, agent, "SELECT 1 AS back").status_code == 200, 60, what="the API to answer")
    assert _rows(_query(stack, agent, "SELECT label FROM scratch WHERE id = 11")) == [["row 11"]]
    with psycopg.connect(dsn, autocommit=True) as fresh:
        assert fresh.execute("SELECT label AS fresh FROM scratch WHERE id = 12").fetchone() == ("row 12",)
    for service in (stack.gateway, stack.web, stack.worker):
        assert service.alive(), service.log_tail()

    reviewer = make_user(Role.REVIEWER)
    _, token = ApiToken.issue(user=reviewer)
    with httpx2.Client(base_url=stack.web_url, timeout=30, trust_env=False) as http:
        review = http.post(
            f"/api/v1/tickets/{ticket_id}/reviews",
            json={"decision": "approve", "comment": "the row is a scratch row of this test"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert review.status_code == 201, review.text
    wait_until(
        lambda: Ticket.objects.get(pk=ticket_id).status in (Status.EXECUTED, Status.FAILED),
        60,
        what="the worker to execute the ticket approved after the restart",
    )
    ticket = Ticket.objects.get(pk=ticket_id)
    assert ticket.status == Status.EXECUTED and ticket.rowcount == 1, (ticket.status, ticket.error)
    with psycopg.connect(stack.target.owner_url) as owner:
        assert owner.execute("SELECT count(*) FROM scratch WHERE id = %s", (row,)).fetchone() == (0,)
    assert AuditEvent.objects.filter(ticket_id=ticket_id, kind=EventKind.TICKET_EXECUTED).count() == 1

    verified = subprocess.run(
        [sys.executable, "manage.py", "verify_audit"], cwd=svc.REPO, capture_output=True, text=True, timeout=120
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
