"""create_agent and create_api_token: the token alone on stdout, stored only hashed, usable, audited."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import time_machine
from django.core.management import CommandError, call_command

from audit.models import AuditEvent, EventKind
from identity import tokens
from identity.models import Agent, ApiToken
from identity.roles import Role
from tests.factories import api_client, make_user
from tests.services import REPO


def run_command(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASOURCE_")}
    return subprocess.run(
        [sys.executable, "manage.py", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_create_agent_prints_only_the_token() -> None:
    owner = make_user(Role.ENGINEER)
    result = run_command("create_agent", "--owner", owner.username, "--name", f"cli-agent-{owner.pk}", "--expires", "7")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.startswith(tokens.AGENT_PREFIX)
    agent = Agent.objects.get(name=f"cli-agent-{owner.pk}")
    assert agent.owner == owner and agent.token_digest == tokens.digest(token)
    assert token not in agent.token_digest
    assert agent.expires_at is not None and (agent.expires_at - agent.created_at).days == 7
    assert AuditEvent.objects.filter(kind=EventKind.TOKEN_ISSUED, agent=agent).exists()
    assert api_client(token).get("/api/v1/tickets/999999").status_code == 404  # authenticated, nothing there


def test_create_agent_refuses_unknown_owner_and_bad_name() -> None:
    with pytest.raises(CommandError):
        call_command("create_agent", "--owner", "nobody-at-all", "--name", "x")
    owner = make_user()
    with pytest.raises(CommandError):
        call_command("create_agent", "--owner", owner.username, "--name", "Bad Name!")


def test_create_api_token() -> None:
    user = make_user(Role.REVIEWER)
    result = run_command("create_api_token", "--user", user.username)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith(tokens.USER_PREFIX)
    assert ApiToken.objects.filter(user=user, token_digest=tokens.digest(token)).exists()


def test_revoked_and_expired_agent_tokens_are_refused() -> None:
    from datetime import timedelta

    from django.utils import timezone

    owner = make_user(Role.ENGINEER)
    revoked, revoked_token = Agent.issue(owner=owner, name=f"revoked-{owner.pk}")
    Agent.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    _, expired_token = Agent.issue(owner=owner, name=f"expired-{owner.pk}", expires_in_days=1)
    assert api_client(revoked_token).get("/api/v1/tickets/1").status_code == 401
    assert api_client(expired_token).get("/api/v1/tickets/1").status_code == 404  # valid today
    with time_machine.travel(timezone.now() + timedelta(days=1, seconds=1)):
        assert api_client(expired_token).get("/api/v1/tickets/1").status_code == 401


def test_inactive_owner_disables_the_agent() -> None:
    owner = make_user(Role.ENGINEER)
    _, token = Agent.issue(owner=owner, name=f"orphan-{owner.pk}")
    owner.is_active = False
    owner.save()
    assert api_client(token).get("/api/v1/tickets/1").status_code == 401


def test_revoke_token_stops_the_agent_and_the_users_api_tokens_and_is_audited() -> None:
    owner = make_user(Role.ENGINEER)
    agent, agent_token = Agent.issue(owner=owner, name=f"to-revoke-{owner.pk}")
    _, api_token = ApiToken.issue(user=owner)
    assert api_client(agent_token).get("/api/v1/tickets/999999").status_code == 404
    result = run_command("revoke_token", "--agent", agent.name)
    assert result.returncode == 0, result.stderr
    assert api_client(agent_token).get("/api/v1/tickets/999999").status_code == 401
    revoked = AuditEvent.objects.get(kind=EventKind.TOKEN_REVOKED, agent=agent)
    assert revoked.actor == owner and revoked.front == "cli"
    with pytest.raises(CommandError, match="already revoked"):
        call_command("revoke_token", "--agent", agent.name)

    assert api_client(api_token).get("/api/v1/tickets/999999").status_code == 404
    call_command("revoke_token", "--user", owner.username)
    assert api_client(api_token).get("/api/v1/tickets/999999").status_code == 401
    assert AuditEvent.objects.filter(kind=EventKind.TOKEN_REVOKED, actor=owner, agent=None).count() == 1
    with pytest.raises(CommandError, match="no unrevoked"):
        call_command("revoke_token", "--user", owner.username)
