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

from tests.services import REPO, die_with_the_test_run, free_port


def start_demo(state: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    """``python -m demo.run`` on ``state``, as ``make demo`` runs it; returns once credentials.json is written."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "WEB_PORT": str(free_port()),
        "GATEWAY_PORT": str(free_port()),
        "DEMO_STATE_DIR": str(state),
        "REDIS_URL": "redis://127.0.0.1:6379/12",
        **extra_env,
    }
    log_path = state.parent / "demo-e2e.log"
    log = open(log_path, "ab")  # noqa: SIM115 - open for the child's lifetime
    process = subprocess.Popen(
        [sys.executable, "-m", "demo.run"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_the_test_run,
    )
    credentials = state / "credentials.json"
    deadline = time.monotonic() + 240
    while not credentials.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("demo did not come up:\n" + log_path.read_text(errors="replace")[-4000:])
        time.sleep(0.5)
    return process


def stop_demo(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    state = tmp_path_factory.mktemp("demo-state")
    process = start_demo(state)
    credentials = state / "credentials.json"
    yield {"process": process, "state": state, "credentials": json.loads(credentials.read_text()), "path": credentials}
    stop_demo(process)


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


def test_readme_discover_phi_runs_in_the_gateways_env(demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The README's discover_phi line, as written, with the demo's state directory in place of .demo: it reads
    the clinic over the read-only role from gateway.env, which only that file holds (never .demo/env)."""
    state = demo["state"]
    gateway_env = state / "gateway.env"
    assert stat.S_IMODE(gateway_env.stat().st_mode) == 0o600
    assert "DATASOURCE_CLINIC_READ_URL=" in gateway_env.read_text()
    assert "DATASOURCE_" not in (state / "env").read_text()
    readme = (REPO / "README.md").read_text()
    command = "set -a; . .demo/gateway.env; set +a; .venv/bin/python manage.py discover_phi --datasource clinic"
    assert command in readme
    out = tmp_path / "proposed.yaml"
    script = command.replace(".demo/", f"{state}/").replace(".venv/bin/python", sys.executable)
    result = subprocess.run(
        ["bash", "-c", f"{script} --out {out}"],
        cwd=REPO,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "public.patients.ssn: ssn" in result.stdout and "already tagged" in result.stdout
    proposed = out.read_text()
    assert "public.patients" in proposed and "public.encounters" in proposed


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


def test_restart_keeps_tokens_and_the_flag_rotates_them(demo) -> None:  # type: ignore[no-untyped-def]
    """Stopped (previous test), started again on the same state directory: the same passwords and tokens, so an
    MCP config written for the first start still works. DEMO_ROTATE_TOKENS=1 replaces them all."""
    state, first = demo["state"], demo["credentials"]
    stop_demo(demo["process"])  # already stopped when the previous test ran
    logins = state / "logins.json"
    assert stat.S_IMODE(logins.stat().st_mode) == 0o600

    again = start_demo(state)
    try:
        second = json.loads((state / "credentials.json").read_text())
        for name in ("credentials.json", "logins.json", "env", "gateway.env"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
        assert second["agent_token"] == first["agent_token"]
        assert second["users"] == first["users"]  # passwords and API tokens
        read = httpx.post(
            second["api_url"] + "queries",
            json={"datasource": "clinic", "sql": "SELECT count(*) FROM patients"},
            headers={"Authorization": f"Bearer {first['agent_token']}"},
            timeout=30,
        )
        assert read.status_code == 200 and read.json()["rows"] == [[10000]]
    finally:
        assert stop_demo(again) == 0

    rotated = start_demo(state, DEMO_ROTATE_TOKENS="1")
    try:
        third = json.loads((state / "credentials.json").read_text())
        assert third["agent_token"] != first["agent_token"]
        old = {u["username"]: u for u in first["users"]}
        for user in third["users"]:
            assert user["api_token"] != old[user["username"]]["api_token"]
            assert user["password"] != old[user["username"]]["password"]
        refused = httpx.post(
            third["api_url"] + "queries",
            json={"datasource": "clinic", "sql": "SELECT 1"},
            headers={"Authorization": f"Bearer {first['agent_token']}"},
            timeout=30,
        )
        assert refused.status_code == 401
        assert json.loads(logins.read_text())["agent"]["token"] == third["agent_token"]
    finally:
        assert stop_demo(rotated) == 0
