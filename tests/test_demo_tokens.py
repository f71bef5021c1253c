"""Demo tokens are stable across restarts: ``seed_demo --keep-from`` keeps what is still valid, replaces the rest.

In-process against the test control plane, each test inside a transaction that is rolled back (the demo's user
names are fixed, and must not linger for other tests). The whole restart, through ``make demo``'s orchestrator,
is in tests/test_demo_e2e.py.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent, EventKind
from identity import tokens
from identity.models import Agent, ApiToken

AGENT = "seed-demo-probe"


@pytest.fixture(autouse=True)
def rolled_back(target: Any) -> Iterator[None]:
    """Everything a test seeds disappears with the transaction (the ``target`` fixture registers ``clinic``)."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def seed(keep_from: Path | None = None) -> dict[str, Any]:
    out = io.StringIO()
    args = ["seed_demo", "--datasource", "clinic", "--agent-name", AGENT, "--agent-owner", "bob"]
    if keep_from is not None:
        args += ["--keep-from", str(keep_from)]
    call_command(*args, stdout=out)
    document: dict[str, Any] = json.loads(out.getvalue())
    return document


def saved(document: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(document))
    return path


def api_token_works(username: str, token: str) -> bool:
    return ApiToken.objects.active().filter(user__username=username, token_digest=tokens.digest(token)).exists()


def agent_token_works(token: str) -> bool:
    return Agent.objects.active().filter(name=AGENT, token_digest=tokens.digest(token)).exists()


def issued_events() -> int:
    return AuditEvent.objects.filter(kind=EventKind.TOKEN_ISSUED).count()


def test_keep_from_keeps_every_valid_password_and_token(tmp_path: Path) -> None:
    first = seed()
    before = issued_events()
    second = seed(keep_from=saved(first, tmp_path / "logins.json"))
    assert second["users"] == first["users"]
    assert second["agent"] == first["agent"]
    assert issued_events() == before  # nothing was issued, so nothing is recorded as issued
    for user in second["users"]:
        assert api_token_works(user["username"], user["api_token"])
        assert get_user_model().objects.get(username=user["username"]).check_password(user["password"])
    assert agent_token_works(second["agent"]["token"])


def test_without_keep_from_everything_rotates(tmp_path: Path) -> None:
    first = seed()
    second = seed()
    for old, new in zip(first["users"], second["users"], strict=True):
        assert (new["password"], new["api_token"]) != (old["password"], old["api_token"])
        assert not api_token_works(old["username"], old["api_token"])  # the old token is revoked
        assert api_token_works(new["username"], new["api_token"])
    assert second["agent"]["token"] != first["agent"]["token"]
    assert not agent_token_works(first["agent"]["token"]) and agent_token_works(second["agent"]["token"])


def test_only_what_is_no_longer_valid_is_replaced(tmp_path: Path) -> None:
    first = seed()
    alice = next(user for user in first["users"] if user["username"] == "alice")
    ApiToken.objects.filter(token_digest=tokens.digest(alice["api_token"])).update(revoked_at=timezone.now())
    Agent.objects.filter(name=AGENT).update(revoked_at=timezone.now())
    tampered = json.loads(json.dumps(first))
    for user in tampered["users"]:
        if user["username"] == "dave":
            user["password"] = "not-daves-password"
    second = seed(keep_from=saved(tampered, tmp_path / "logins.json"))
    by_name = {user["username"]: user for user in second["users"]}
    first_by_name = {user["username"]: user for user in first["users"]}
    assert by_name["alice"]["api_token"] != alice["api_token"]  # revoked: replaced
    assert by_name["alice"]["password"] == alice["password"]  # still valid: kept
    assert by_name["dave"]["password"] not in {"not-daves-password", first_by_name["dave"]["password"]}
    assert by_name["dave"]["api_token"] == first_by_name["dave"]["api_token"]
    for name in ("bob", "carol"):
        assert by_name[name] == first_by_name[name]
    assert second["agent"]["token"] != first["agent"]["token"]  # the agent was revoked: a new token, active again
    assert agent_token_works(second["agent"]["token"])


@pytest.mark.parametrize("content", [None, "", "{not json", "[]", '{"users": "x", "agent": 3}'])
def test_missing_or_unreadable_file_means_nothing_to_keep(tmp_path: Path, content: str | None) -> None:
    first = seed()
    path = tmp_path / "logins.json"
    if content is not None:
        path.write_text(content)
    second = seed(keep_from=path)
    assert second["agent"]["token"] != first["agent"]["token"]
    assert agent_token_works(second["agent"]["token"])
