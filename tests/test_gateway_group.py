"""Several gateway processes on one port (``GATEWAY_PROCESSES``, gateway.wire.group), as real processes.

What one process used to know alone must hold for the group: a CancelRequest reaches its session whichever
process the kernel hands it to, an agent's session cap counts every process's sessions, a process killed -9 is
replaced and its seats freed, and SIGTERM ends every session with 57P01 and leaves no process behind.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.pgwire.backend import ErrorResponse
from gateway.pgwire.frontend import CancelRequest, Query
from gateway.wire.group import member_of
from identity.roles import Role
from tests import services as svc
from tests.factories import make_agent, make_user
from tests.wire_client import WireClient, WireClosed, rows

LONG = "SELECT count(*) FROM generate_series(1, 300000000)"  # many seconds upstream, unless cancelled
CAP = 3


@dataclass
class Group:
    service: svc.Service
    port: int

    def members(self) -> dict[int, int]:
        """Member index -> pid, from the processes whose parent is the supervisor."""
        assert self.service.process is not None
        found: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            member = [a for a in argv if a.startswith(b"--member=")]
            if parent == self.service.process.pid and member:
                found[int(member[0].split(b"=")[1])] = int(entry.name)
        return found

    def forwarded_cancels(self) -> int:
        return self.service.log_path.read_text(errors="replace").count("cancel request forwarded")


def _start_group(target: Any, log_dir: Path, name: str) -> Group:
    service, port = svc.gateway(
        target.read_url,
        log_dir,
        name=name,
        # INFO: the test counts the lines of cancel requests one process passed to the other.
        extra_env={"GATEWAY_PROCESSES": "2", "GATEWAY_MAX_SESSIONS_PER_AGENT": str(CAP), "LOG_LEVEL": "INFO"},
    )
    group = Group(service, port)
    svc.wait_until(lambda: len(group.members()) == 2, 30, what="both gateway processes")
    return group


@pytest.fixture(scope="module")
def group(target, tmp_path_factory) -> Iterator[Group]:  # type: ignore[no-untyped-def]
    started = _start_group(target, tmp_path_factory.mktemp("group"), "group-gateway")
    yield started
    started.service.stop()


def _login() -> tuple[str, str]:
    agent, token = make_agent(make_user(Role.ENGINEER))
    return agent.name, token


def _session(group: Group, login: tuple[str, str]) -> WireClient:
    return WireClient(group.port, *login)


def _member(client: WireClient) -> int:
    assert client.backend_key is not None
    return member_of(client.backend_key[0])


def _sessions_on_both(group: Group, logins: list[tuple[str, str]]) -> list[WireClient]:
    """Sessions opened until both members hold some (the kernel picks; a few tries are enough)."""
    clients: list[WireClient] = []
    for login in logins:
        for _ in range(CAP):
            clients.append(_session(group, login))
        if {_member(c) for c in clients} == {0, 1}:
            break
    return clients


def _refused(group: Group, login: tuple[str, str]) -> str:
    try:
        _session(group, login).close()
    except AssertionError as refusal:
        return str(refusal)
    return ""


def test_connections_are_spread_over_the_processes_and_each_serves(group: Group) -> None:
    clients = _sessions_on_both(group, [_login() for _ in range(8)])
    try:
        assert {_member(c) for c in clients} == {0, 1}
        for client in clients:
            assert rows(client.query("SELECT 41 + 1")) == [("42",)]
    finally:
        for client in clients:
            client.close()


def test_an_agents_session_cap_counts_the_sessions_of_every_process(group: Group) -> None:
    login = _login()
    held = [_session(group, login) for _ in range(CAP)]
    try:
        # Each further attempt lands on either process; every one must be refused, as PostgreSQL refuses a role
        # past its connection limit. Counted per process, some would be let in.
        for _ in range(8):
            assert "53300" in _refused(group, login)
        held.pop().close()
        svc.wait_until(lambda: not _refused(group, login), 10, what="the freed seat to be usable")
    finally:
        for client in held:
            client.close()


def _cancel(port: int, key: tuple[int, bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(CancelRequest(*key).encode())
        sock.recv(1)  # the gateway closes the connection once it has passed the request on


def test_a_cancel_request_reaches_its_session_whichever_process_takes_it(group: Group) -> None:
    login = _login()
    before = group.forwarded_cancels()
    attempts = 0
    while group.forwarded_cancels() == before or attempts < 4:
        attempts += 1
        assert attempts <= 30, "no cancel request was ever taken by the other process"
        with _session(group, login) as client:
            client.send(Query(LONG))
            time.sleep(0.3)
            assert client.backend_key is not None
            started = time.monotonic()
            _cancel(group.port, client.backend_key)
            replies = client.read_until_ready(timeout=10)
            errors = [m.fields["C"] for m in replies if isinstance(m, ErrorResponse)]
            assert errors == ["57014"], replies
            assert time.monotonic() - started < 5


def test_a_process_killed_is_replaced_and_its_seats_are_freed(target, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    group = _start_group(target, tmp_path_factory.mktemp("group-kill"), "group-kill-gateway")
    try:
        login = _login()
        clients = _sessions_on_both(group, [login])
        while {_member(c) for c in clients} != {0, 1}:  # the agent's three seats, on both processes
            for client in clients:
                client.close()
            time.sleep(0.3)
            clients = _sessions_on_both(group, [login])
        victim = group.members()[1]
        os.kill(victim, signal.SIGKILL)
        for client in clients:
            if _member(client) == 1:
                with pytest.raises((WireClosed, OSError)):
                    client.query("SELECT 1")
            else:
                assert rows(client.query("SELECT 1")) == [("1",)]  # the other process's sessions go on
            client.close()
        svc.wait_until(lambda: group.members().get(1) not in (None, victim), 20, what="a new process 1")
        # Every seat is free again, the dead process's included: the agent opens its full cap on both.
        fresh = svc.wait_until(lambda: _full_cap_on_both(group, login), 30, what="the full cap on both processes")
        for client in fresh:
            client.close()
    finally:
        group.service.stop()


def _full_cap_on_both(group: Group, login: tuple[str, str]) -> list[WireClient] | None:
    clients: list[WireClient] = []
    try:
        for _ in range(CAP):
            clients.append(_session(group, login))
    except AssertionError:
        for client in clients:
            client.close()
        return None
    if {_member(c) for c in clients} != {0, 1}:
        for client in clients:
            client.close()
        time.sleep(0.2)
        return None
    return clients


def test_sigterm_ends_every_session_with_57p01_and_leaves_no_process(target, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    group = _start_group(target, tmp_path_factory.mktemp("group-stop"), "group-stop-gateway")
    members = group.members()
    clients = _sessions_on_both(group, [_login() for _ in range(8)])
    assert group.service.process is not None
    os.kill(group.service.process.pid, signal.SIGTERM)  # the supervisor alone: it stops its members
    try:
        for client in clients:
            messages = client.read_available(wait=12)
            fatal = [m.fields["C"] for m in messages if isinstance(m, ErrorResponse)]
            assert fatal == ["57P01"], messages
            client.close()
        assert group.service.process.wait(timeout=30) == 0
        for pid in members.values():
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    finally:
        group.service.stop()
