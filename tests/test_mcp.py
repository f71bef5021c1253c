"""MCP for agents, with the real ``mcp`` SDK client: streamable HTTP against the real uvicorn web process at
``/mcp``, and stdio against ``manage.py mcp --token-file F`` spawned without any target credential.

Both fronts reach the target only through the real gateway process; held statements are approved over the
REST API and executed by the real Celery worker.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from django.utils import timezone
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from audit.models import AuditEvent, EventKind
from identity.models import Agent, ApiToken
from identity.roles import Role
from tests.factories import make_agent, make_user, user_client

pytestmark = pytest.mark.usefixtures("services")

REPO = Path(__file__).resolve().parent.parent
TOOLS = {"query", "ticket_status", "wait_for_ticket", "list_tables", "explain"}
FINAL = {"executed", "failed", "rejected", "expired", "cancelled"}
# What the agent's own calls cause (review and execution events are the reviewer's and the worker's).
AGENT_KINDS = ["auth.succeeded", "query.submitted", "query.executed", "ticket.created", "ticket.result_read"]
PATIENTS_SQL = "SELECT id, ssn, full_name, date_of_birth FROM patients ORDER BY id LIMIT 5"


# --- clients -------------------------------------------------------------------------------------------------------


@asynccontextmanager
async def http_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def without_target_credentials() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DATASOURCE_")}


def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / f"token-{len(list(tmp_path.iterdir()))}"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


@asynccontextmanager
async def stdio_session(path: Path) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["manage.py", "mcp", "--token-file", str(path)],
        env=without_target_credentials(),
        cwd=REPO,
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def refusal(session: ClientSession, tool: str, **arguments: Any) -> str:
    result = await session.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return " ".join(getattr(block, "text", "") for block in result.content)


# --- the story an agent lives through ------------------------------------------------------------------------------


def true_patients(owner_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(owner_url) as conn:
        return conn.execute(
            "SELECT id, ssn, full_name, date_of_birth::text FROM patients ORDER BY patients.id LIMIT 5"
        ).fetchall()


def assert_masked(body: dict[str, Any], truth: list[tuple[Any, ...]]) -> None:
    assert body["status"] == "executed", body
    assert body["columns"] == ["id", "ssn", "full_name", "date_of_birth"]
    for got, real in zip(body["rows"], truth, strict=True):
        assert got[0] == real[0] and isinstance(got[0], int)  # the id is not PHI: a JSON number
        assert real[1] not in str(body["rows"])  # no real SSN anywhere in the answer
        assert got[1] == "***" + real[1][-4:]  # partial SSN
        assert got[2].startswith("name_") and got[2] != real[2]  # pseudonymised name
        assert got[3] == real[3][:4]  # birth date generalised to the year
    assert body["masking"]["ssn"]["mask"] == "partial"
    assert [(c["type"], c["json"], c["mask"]) for c in body["column_types"]] == [
        ("bigint", "number", None),
        ("text", "string", "partial"),
        ("text", "string", "hash"),
        ("date", "string", "generalize"),
    ]


def approve(ticket_id: int) -> None:
    """A reviewer who is not the agent's owner approves over the REST API (runs in a thread: sync ORM)."""
    response = user_client(make_user(Role.REVIEWER)).post(
        f"/api/v1/tickets/{ticket_id}/reviews", {"decision": "approve", "comment": "ok"}, format="json"
    )
    assert response.status_code == 201, response.json()


async def held_write_approved_and_waited(session: ClientSession, sql: str) -> dict[str, Any]:
    held = await call(session, "query", datasource="clinic", sql=sql, reason="mcp test")
    assert held["status"] == "pending_approval", held
    ticket_id = held["ticket"]["id"]
    assert held["ticket"]["url"].endswith(f"/tickets/{ticket_id}/")

    status = await call(session, "ticket_status", ticket_id=ticket_id)
    assert status["status"] == "pending" and "result" not in status

    await asyncio.to_thread(approve, ticket_id)
    for _ in range(12):
        ticket = await call(session, "wait_for_ticket", ticket_id=ticket_id, timeout_seconds=10)
        if ticket["status"] in FINAL:
            break
    assert ticket["status"] == "executed", ticket
    assert ticket["reviews"][0]["decision"] == "approve"
    again = await call(session, "ticket_status", ticket_id=ticket_id)
    assert again["result"] == ticket["result"]
    return ticket


def mcp_tools_audited(agent: Agent) -> list[str]:
    return list(
        AuditEvent.objects.filter(agent_id=agent.pk, kind=EventKind.AUTH_SUCCEEDED, front="mcp")
        .filter(details__has_key="tool")
        .order_by("id")
        .values_list("details__tool", flat=True)
    )


def test_http_tools_masked_read_and_held_write_through_approval(web, services) -> None:  # type: ignore[no-untyped-def]
    agent, token = make_agent(make_user(Role.ENGINEER))
    truth = true_patients(services.target.owner_url)

    async def story() -> tuple[set[str], dict[str, Any], dict[str, Any]]:
        async with http_session(web.url, token) as session:
            names = {tool.name for tool in (await session.list_tools()).tools}
            read = await call(session, "query", datasource="clinic", sql=PATIENTS_SQL)
            ticket = await held_write_approved_and_waited(
                session, "UPDATE scratch SET label = 'mcp-http' WHERE id = 50 RETURNING id, label"
            )
            return names, read, ticket

    names, read, ticket = asyncio.run(story())

    assert names == TOOLS
    assert_masked(read, truth)
    assert ticket["rowcount"] == 1
    assert ticket["result"] == {
        "columns": ["id", "label"],
        "column_types": [
            {"name": "id", "type": "integer", "oid": 23, "json": "number", "mask": None},
            {"name": "label", "type": "text", "oid": 25, "json": "string", "mask": None},
        ],
        "rows": [[50, "mcp-http"]],
        "rowcount": 1,
        "truncated": False,
    }
    with psycopg.connect(services.target.owner_url) as conn:
        assert conn.execute("SELECT label FROM scratch WHERE id = 50").fetchone() == ("mcp-http",)

    # Same policy engine, same audit: the statements and the ticket are recorded under front "mcp".
    events = AuditEvent.objects.filter(agent_id=agent.pk, kind__in=AGENT_KINDS)
    assert set(events.values_list("front", flat=True)) == {"mcp"}
    kinds = set(events.values_list("kind", flat=True))
    assert {"query.submitted", "query.executed", "ticket.created", "ticket.result_read"} <= kinds
    assert events.filter(kind="ticket.created", ticket_id=ticket["id"]).exists()
    assert mcp_tools_audited(agent)[:3] == ["query", "query", "ticket_status"]
    assert {"wait_for_ticket"} <= set(mcp_tools_audited(agent))
    sessions = set(events.values_list("session_id", flat=True))  # one per agent per UTC day
    assert all(session.startswith(f"mcp:agent-{agent.pk}:") for session in sessions)
    assert events.filter(source_address="127.0.0.1").exists()


def test_http_list_tables_shows_phi_tags_and_agent_masks(web) -> None:  # type: ignore[no-untyped-def]
    agent, token = make_agent(make_user(Role.ENGINEER))

    async def story() -> tuple[dict[str, Any], str]:
        async with http_session(web.url, token) as session:
            tables = await call(session, "list_tables", datasource="clinic")
            unknown = await refusal(session, "list_tables", datasource="nowhere")
            return tables, unknown

    listing, unknown = asyncio.run(story())

    assert listing["identity_kind"] == "agent"
    tables = {(t["schema"], t["name"]): t for t in listing["tables"]}
    patients = {c["name"]: c for c in tables[("public", "patients")]["columns"]}
    assert patients["ssn"] == {"name": "ssn", "type": "text", "phi_type": "ssn", "mask": "partial", "filtering": "hold"}
    assert patients["full_name"]["phi_type"] == "name" and patients["full_name"]["mask"] == "hash"
    assert patients["date_of_birth"]["mask"] == "generalize"
    assert "phi_type" not in patients["id"] and patients["id"]["type"] == "bigint"
    assert [c["name"] for c in tables[("public", "scratch")]["columns"]] == ["id", "label"]
    assert not any(schema == "phigate" for schema, _ in tables)  # the ledger is not the read role's business
    assert "partial" in listing["masks"]
    assert "unknown data source" in unknown
    assert mcp_tools_audited(agent) == ["list_tables", "list_tables"]


def test_http_explain_plans_without_running_and_refuses_what_it_must(web, services) -> None:  # type: ignore[no-untyped-def]
    agent, token = make_agent(make_user(Role.ENGINEER))

    async def story() -> dict[str, Any]:
        async with http_session(web.url, token) as session:
            return {
                "read": await call(session, "explain", datasource="clinic", sql="SELECT * FROM scratch WHERE id < 10"),
                "write": await call(session, "explain", datasource="clinic", sql="DELETE FROM scratch WHERE id = 0"),
                "analyze": await refusal(session, "explain", datasource="clinic", sql="EXPLAIN ANALYZE SELECT 1"),
                "explain": await refusal(session, "explain", datasource="clinic", sql="EXPLAIN SELECT 1"),
                "batch": await refusal(session, "explain", datasource="clinic", sql="SELECT 1; SELECT 2"),
                "denied": await refusal(
                    session, "explain", datasource="clinic", sql="SELECT pg_read_file('/etc/hostname')"
                ),
                "phi filter": await refusal(
                    session, "explain", datasource="clinic", sql="SELECT id FROM patients WHERE full_name = 'Ann Lee'"
                ),
                "ddl": await refusal(session, "explain", datasource="clinic", sql="DROP TABLE scratch"),
            }

    answers = asyncio.run(story())

    read = answers["read"]
    assert isinstance(read["estimated_rows"], int) and read["estimated_rows"] >= 1
    assert "scratch" in read["plan"] and "rows=" in read["plan"]
    write = answers["write"]
    assert isinstance(write["estimated_rows"], int) and "scratch" in write["plan"]
    assert write["explained"].startswith("SELECT") and "DELETE" in write["note"]
    assert "ANALYZE" in answers["analyze"]
    assert "send the statement itself" in answers["explain"]
    assert "exactly one statement" in answers["batch"]
    assert "denied by policy" in answers["denied"]
    assert "PHI" in answers["phi filter"]
    assert "EXPLAIN covers" in answers["ddl"]
    with psycopg.connect(services.target.owner_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'").fetchone() == (1,)

    # Every EXPLAIN is audited: the planned ones as submitted (before running), the refused ones as denied.
    explains = AuditEvent.objects.filter(agent_id=agent.pk, front="mcp", details__explain=True)
    assert explains.filter(kind=EventKind.QUERY_SUBMITTED).count() == 2
    assert explains.filter(kind=EventKind.QUERY_DENIED).count() == 6
    assert mcp_tools_audited(agent) == ["explain"] * 8


def test_http_refuses_missing_bad_and_personal_tokens(web) -> None:  # type: ignore[no-untyped-def]
    human = make_user(Role.ENGINEER)
    _, personal = ApiToken.issue(user=human)
    bad = "pga_not-a-real-token"
    before = AuditEvent.objects.filter(kind=EventKind.AUTH_FAILED, front="mcp").count()
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"Accept": "application/json, text/event-stream"}

    with httpx2.Client(base_url=web.url, timeout=30) as http:
        missing = http.post("/mcp", json=initialize, headers=accept)
        malformed = http.post("/mcp", json=initialize, headers=accept | {"Authorization": "Token abc"})
        invalid = http.post("/mcp", json=initialize, headers=accept | {"Authorization": f"Bearer {bad}"})
        person = http.post("/mcp", json=initialize, headers=accept | {"Authorization": f"Bearer {personal}"})

    assert (missing.status_code, malformed.status_code, invalid.status_code) == (401, 401, 401)
    assert invalid.headers["www-authenticate"].startswith("Bearer")
    assert person.status_code == 403 and "agent tokens" in person.json()["error_description"]

    async def sdk_with(token: str) -> None:
        async with http_session(web.url, token):
            pass

    for token in (bad, personal):  # the SDK client cannot even initialize
        with pytest.raises(BaseException):  # noqa: B017 - the SDK wraps transport errors in exception groups
            asyncio.run(sdk_with(token))

    failures = AuditEvent.objects.filter(kind=EventKind.AUTH_FAILED, front="mcp").order_by("id")
    assert failures.count() - before == 5  # malformed, invalid, personal (raw), and the SDK's two attempts
    assert failures.filter(actor_id=human.pk, summary__contains="agent tokens").exists()
    for event in failures:
        assert bad not in f"{event.summary} {event.details}" and personal not in f"{event.summary} {event.details}"


def test_stdio_without_target_credentials(tmp_path: Path, services) -> None:  # type: ignore[no-untyped-def]
    agent, token = make_agent(make_user(Role.ENGINEER))
    truth = true_patients(services.target.owner_url)
    path = token_file(tmp_path, token)

    def revoke() -> None:
        Agent.objects.filter(pk=agent.pk).update(revoked_at=timezone.now())

    async def story() -> tuple[set[str], dict[str, Any], dict[str, Any], dict[str, Any], str]:
        async with stdio_session(path) as session:
            names = {tool.name for tool in (await session.list_tools()).tools}
            read = await call(session, "query", datasource="clinic", sql=PATIENTS_SQL)
            ticket = await held_write_approved_and_waited(
                session, "UPDATE scratch SET label = 'mcp-stdio' WHERE id = 39 RETURNING id, label"
            )
            plan = await call(session, "explain", datasource="clinic", sql="SELECT count(*) FROM scratch")
            await asyncio.to_thread(revoke)
            revoked = await refusal(session, "ticket_status", ticket_id=ticket["id"])
            return names, read, ticket, plan, revoked

    names, read, ticket, plan, revoked = asyncio.run(story())

    assert names == TOOLS
    assert_masked(read, truth)
    assert ticket["result"]["rows"] == [[39, "mcp-stdio"]]
    assert plan["estimated_rows"] == 1
    assert "revoked" in revoked  # checked on every call: revocation stops a running session
    events = AuditEvent.objects.filter(agent_id=agent.pk, kind__in=AGENT_KINDS)
    assert set(events.values_list("front", flat=True)) == {"mcp"}
    assert {"query.submitted", "query.executed", "ticket.created", "ticket.result_read"} <= set(
        events.values_list("kind", flat=True)
    )
    sessions = set(events.values_list("session_id", flat=True))
    assert len(sessions) == 1 and sessions.pop().startswith("mcp:stdio-")
    started = events.get(kind=EventKind.AUTH_SUCCEEDED, summary__startswith="MCP stdio session started")
    assert mcp_tools_audited(agent)[:2] == ["query", "query"]
    assert AuditEvent.objects.filter(kind=EventKind.AUTH_FAILED, session_id=started.session_id).count() == 1


def test_stdio_refuses_personal_and_bad_tokens_and_target_credentials(tmp_path: Path, services) -> None:  # type: ignore[no-untyped-def]
    human = make_user(Role.ENGINEER)
    _, personal = ApiToken.issue(user=human)
    _, agent_token = make_agent(human)

    def run(token: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "mcp", "--token-file", str(token_file(tmp_path, token))],
            cwd=REPO,
            env=without_target_credentials() | (extra_env or {}),
            input="",
            capture_output=True,
            text=True,
            timeout=120,
        )

    person = run(personal)
    assert person.returncode != 0 and "agent tokens" in person.stderr and person.stdout == ""
    unknown = run("pga_not-a-real-token")
    assert unknown.returncode != 0 and "unknown, revoked or expired token" in unknown.stderr
    holding = run(agent_token, {"DATASOURCE_CLINIC_READ_URL": services.target.read_url})
    assert holding.returncode != 0 and "must not hold target credentials" in holding.stderr
    assert personal not in person.stderr
    assert AuditEvent.objects.filter(
        kind=EventKind.AUTH_FAILED, front="mcp", actor_id=human.pk, summary__contains="agent tokens"
    ).exists()
