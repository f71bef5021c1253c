"""A client that stops reading costs the gateway a bounded buffer and costs the other clients nothing.

Real gateway process, real sockets: the slow reader asks for ~120 MB of rows and then reads nothing. The gateway
must stop reading the upstream once the client's socket backs up (so PostgreSQL's own send buffer holds the
rest), instead of buffering the whole result in memory; meanwhile other sessions keep getting answers.
"""

from __future__ import annotations

import socket
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from gateway.pgwire.frontend import Query
from identity.roles import Role
from tests.factories import make_agent, make_user
from tests.wire_client import WireClient

BIG_RESULT = "SELECT g, repeat('x', 1200) AS filler FROM generate_series(1, 100000) AS g"  # ~120 MB on the wire


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def agent(services: Any) -> dict[str, Any]:
    agent, token = make_agent(make_user(Role.ENGINEER))
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    return {"name": agent.name, "token": token, "dsn": dsn, "port": services.gateway_port}


def test_a_reader_that_stops_reading_holds_a_bounded_buffer(services: Any, agent: dict[str, Any]) -> None:
    dsn = agent["dsn"]
    pid = services.gateway.process.pid
    with psycopg.connect(dsn, autocommit=True) as warm:  # decisions, catalog and pools warmed before measuring
        warm.execute("SELECT 1").fetchone()
    before = _rss_kib(pid)
    slow = WireClient(agent["port"], agent["name"], agent["token"])
    try:
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        slow.send(Query(BIG_RESULT))
        latencies = []
        with psycopg.connect(dsn, autocommit=True) as other:
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                started = time.monotonic()
                assert other.execute("SELECT 1").fetchone() == (1,)
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)
        grown_mib = (_rss_kib(pid) - before) / 1024
    finally:
        slow.close()
    # Unbounded buffering took +149 MB in 20 s; a bounded relay holds a few MB (the socket buffers, one flush).
    assert grown_mib < 40, f"gateway grew {grown_mib:.0f} MiB while one client did not read"
    # Liveness, not speed (speed is bench/'s job): the others were answered all along, not after the slow one.
    assert len(latencies) > 20 and statistics.median(latencies) < 0.5, latencies
