"""`make demo`'s orchestrator on a fresh state directory: comes up, writes credentials, serves the README flow.

Runs `python -m demo.run` as a user would (embedded PostgreSQL via pgserver, 10,000 synthetic patients), then
drives the HTTP API exactly like the README's curl examples, and stops it with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.services import REPO, free_port


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    state = tmp_path_factory.mktemp("demo-state")
    web_port, gateway_port = free_port(), free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "WEB_PORT": str(web_port),
        "GATEWAY_PORT": str(gateway_port),
        "DEMO_STATE_DIR": str(state),
        "REDIS_URL": "redis://127.0.0.1:6379/12",
    }
    log = open(state.parent / "demo-e2e.log", "wb")  # noqa: SIM115 - open for the child's lifetime
    process = subprocess.Popen(
        [sys.executable, "-m", "demo.run"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    credentials = state / "credentials.json"
    deadline = time.monotonic() + 240
    while not credentials.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("demo did not come up:\n" + (state.parent / "demo-e2e.log").read_text(errors="replace")[-4000:])
        time.sleep(0.5)
    yield {"process": process, "state": state, "credentials": json.loads(credentials.read_text()), "path": credentials}
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_credentials_file_is_private_and_complete(demo) -> None:  # type: ignore[no-untyped-def]
    assert stat.S_IMODE(demo["path"].stat().st_mode) == 0o600
    creds = demo["credentials"]
    assert creds["datasource"] == "clinic" and creds["agent_owner"] == "bob"
    assert creds["agent_dsn"].startswith("postgresql://claude-code:") and creds["agent_dsn"].endswith("/clinic")
    assert {(u["username"], u["role"]) for u in creds["users"]} == {
        ("alice", "reviewer"),
        ("dave", "reviewer"),
        ("bob", "engineer"),
        ("carol", "compliance"),
        ("erin", "admin"),
    }
    env_file = (demo["state"] / "env").read_text()
    assert "DATABASE_URL=" in env_file and "DATASOURCE_" not in env_file


def test_readme_flow(demo) -> None:  # type: ignore[no-untyped-def]
    creds = demo["credentials"]
    api = creds["api_url"]
    tokens = {u["username"]: u["api_token"] for u in creds["users"]}

    def call(token: str, method: str, path: str, body: dict | None = None) -> httpx.Response:  # type: ignore[type-arg]
        return httpx.request(method, api + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    read = call(
        creds["agent_token"],
        "POST",
        "queries",
        {"datasource": "clinic", "sql": "SELECT id, full_name, ssn FROM patients ORDER BY id LIMIT 2"},
    )
    assert read.status_code == 200
    assert all(row[2].startswith("***") for row in read.json()["rows"])
    count = call(creds["agent_token"], "POST", "queries", {"datasource": "clinic", "sql": "SELECT id FROM patients"})
    assert count.json()["truncated"] is True  # 10,000 patients, capped at the row limit

    held = call(
        creds["agent_token"],
        "POST",
        "queries",
        {"datasource": "clinic", "sql": "DELETE FROM prescriptions WHERE id = 1", "reason": "duplicate"},
    )
    assert held.status_code == 202
    ticket = held.json()["ticket"]["id"]
    assert call(tokens["bob"], "POST", f"tickets/{ticket}/reviews", {"decision": "approve"}).status_code == 403
    assert (
        call(tokens["alice"], "POST", f"tickets/{ticket}/reviews", {"decision": "approve", "comment": "ok"}).status_code
        == 201
    )
    status = call(creds["agent_token"], "GET", f"tickets/{ticket}/wait?timeout=20").json()["status"]
    deadline = time.monotonic() + 30
    while status not in {"executed", "failed"} and time.monotonic() < deadline:
        status = call(creds["agent_token"], "GET", f"tickets/{ticket}/wait?timeout=5").json()["status"]
    assert status == "executed"
    assert call(creds["agent_token"], "GET", f"tickets/{ticket}/result").json()["rowcount"] == 1
    events = call(tokens["carol"], "GET", "audit/events?kind=ticket.executed")
    assert events.status_code == 200 and events.json()["results"]
    assert httpx.get(creds["ui_url"] + "accounts/login/", timeout=10).status_code == 200


def test_the_demo_admin_is_styled_and_erin_reaches_the_policy_editor(demo) -> None:  # type: ignore[no-untyped-def]
    """The README's promise: the policy editor at /admin/, reachable by a demo user, styled under uvicorn."""
    base = demo["credentials"]["ui_url"].rstrip("/")
    erin = next(u for u in demo["credentials"]["users"] if u["username"] == "erin")
    with httpx.Client(base_url=base, timeout=10) as client:
        login = client.get("/admin/login/?next=/admin/policy/phicolumn/")
        assert login.status_code == 200
        assert client.get("/static/admin/css/base.css").status_code == 200
        signed_in = client.post(
            "/admin/login/?next=/admin/policy/phicolumn/",
            data={
                "username": "erin",
                "password": erin["password"],
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
                "next": "/admin/policy/phicolumn/",
            },
            headers={"Referer": f"{base}/admin/login/"},
        )
        assert signed_in.status_code == 302 and signed_in.headers["location"] == "/admin/policy/phicolumn/"
        editor = client.get("/admin/policy/phicolumn/")
        assert editor.status_code == 200 and "ssn" in editor.text
        assert client.get("/admin/auth/user/").status_code == 403  # the policy, not the people


def test_readme_wire_examples(demo) -> None:  # type: ignore[no-untyped-def]
    """The README's psycopg and psql examples, against the demo's agent DSN."""
    import psycopg

    creds = demo["credentials"]
    with psycopg.connect(creds["agent_dsn"], connect_timeout=10) as conn:
        rows = conn.execute("SELECT id, full_name FROM patients ORDER BY id LIMIT 3").fetchall()
    assert [row[0] for row in rows] == [1, 2, 3]
    assert all(row[1].startswith("name_") for row in rows)  # pseudonymised
    psql = subprocess.run(
        ["psql", creds["agent_dsn"], "-X", "-At", "-c", "SELECT count(*) FROM encounters"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert psql.returncode == 0, psql.stderr


def test_sigterm_stops_everything_and_removes_credentials(demo) -> None:  # type: ignore[no-untyped-def]
    process = demo["process"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not demo["path"].exists()
    web_port = int(demo["credentials"]["ui_url"].rsplit(":", 1)[1].strip("/"))
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{web_port}/healthz", timeout=2)


def test_demo_state_is_outside_the_repo_by_default() -> None:
    assert Path(REPO / ".gitignore").read_text().count(".demo/") == 1
