"""``manage.py seed_demo --datasource D --agent-name A --agent-owner U``: demo users, tokens, agent, PHI tags and
the classification of every clinic table, and its patient keys (the accounting of disclosures).

For ``make demo`` only. Prints one JSON object with the users' passwords and API tokens and the agent's token.
Re-running rotates them all, unless ``--keep-from`` names the previous run's output: a password or token in it
that the control plane still accepts is kept (so a restarted demo keeps the MCP configs and scripts written for
it), anything else is replaced.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from audit.models import EventKind
from audit.recorder import Context, record
from demo.clinic import CLINIC_TABLES, PATIENT_KEYS, PHI_TAGS
from identity import tokens
from identity.models import Agent, ApiToken
from identity.principal import Principal
from identity.roles import Role, grant_role
from policy.models import ClassificationSource, ClassifiedRelation, DataSource, PatientKeyColumn, PhiColumn

DEMO_USERS = [
    ("alice", Role.REVIEWER),
    ("dave", Role.REVIEWER),
    ("bob", Role.ENGINEER),
    ("carol", Role.COMPLIANCE),
    ("erin", Role.ADMIN),  # staff: edits the PHI policy in /admin/
]


def _make_policy_editor(user: Any) -> None:
    """Staff with the policy app's permissions only: the admin's policy editor, not user or group management."""
    from django.contrib.auth.models import Permission

    user.is_staff = True
    user.save(update_fields=["is_staff"])
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="policy"))


class Command(BaseCommand):
    help = "Create or refresh the demo users, their API tokens, the demo agent and the clinic PHI policy."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--datasource", required=True)
        parser.add_argument("--agent-name", required=True)
        parser.add_argument("--agent-owner", required=True)
        parser.add_argument(
            "--keep-from",
            help="a previous run's output (JSON file, kept 0600): its passwords and tokens that are still valid "
            "are kept instead of rotated",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        datasource = DataSource.objects.filter(name=options["datasource"]).first()
        if datasource is None:
            raise CommandError(f"data source {options['datasource']!r} is not registered (run provision_datasource)")
        context = Context(front="cli")
        previous = _previous_run(options["keep_from"])
        users_out = []
        with transaction.atomic():
            for username, role in DEMO_USERS:
                user, _ = get_user_model().objects.get_or_create(
                    username=username, defaults={"email": f"{username}@example.com"}
                )
                kept = previous["users"].get(username, {})
                password = _kept_password(user, kept.get("password"))
                if password is None:
                    password = secrets.token_urlsafe(12)
                    user.set_password(password)
                user.is_active = True
                user.save()
                grant_role(user, role)
                if role == Role.ADMIN:
                    _make_policy_editor(user)
                api_token = _kept_api_token(user, kept.get("api_token"))
                if api_token is None:
                    ApiToken.objects.filter(user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())
                    _, api_token = ApiToken.issue(user=user)
                    record(
                        EventKind.TOKEN_ISSUED,
                        principal=Principal(human=user),
                        context=context,
                        summary="demo API token",
                    )
                users_out.append(
                    {"username": username, "password": password, "role": role.value, "api_token": api_token}
                )
            owner = get_user_model().objects.get(username=options["agent_owner"])
            agent = Agent.objects.filter(name=options["agent_name"]).first()
            if agent is not None and agent.owner_id != owner.pk:
                raise CommandError(f"agent {agent.name} belongs to someone else")
            agent_token = _kept_agent_token(agent, previous["agent"])
            if agent_token is None:
                if agent is None:
                    agent, agent_token = Agent.issue(owner=owner, name=options["agent_name"])
                else:
                    agent.revoked_at = None
                    agent.save(update_fields=["revoked_at"])
                    agent_token = agent.rotate_token()
                record(
                    EventKind.TOKEN_ISSUED,
                    principal=Principal.for_agent(agent),
                    context=context,
                    summary="demo agent token",
                )
            assert agent is not None
            for tag in PHI_TAGS:
                PhiColumn.objects.update_or_create(
                    datasource=datasource,
                    schema_name="public",
                    table_name=tag.table,
                    column_name=tag.column,
                    defaults={"phi_type": tag.phi_type},
                )
            for patient_key in PATIENT_KEYS:
                PatientKeyColumn.objects.update_or_create(
                    datasource=datasource,
                    schema_name="public",
                    table_name=patient_key.table,
                    column_name=patient_key.column,
                    defaults={"key_name": patient_key.key_name},
                )
            for table in CLINIC_TABLES:
                ClassifiedRelation.objects.get_or_create(
                    datasource=datasource,
                    schema_name="public",
                    table_name=table,
                    defaults={"how": ClassificationSource.SEED},
                )
        self.stdout.write(
            json.dumps(
                {
                    "users": users_out,
                    "agent": {"name": agent.name, "owner": owner.get_username(), "token": agent_token},
                    "phi_tags": len(PHI_TAGS),
                }
            )
        )


def _previous_run(path: str | None) -> dict[str, Any]:
    """The passwords and tokens of the run whose output is at ``path``, by username; empty without one."""
    previous: dict[str, Any] = {"users": {}, "agent": {}}
    if not path:
        return previous
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        document = None
    if not isinstance(document, dict):  # missing or cut short: nothing to keep, everything is issued anew
        return previous
    for entry in document.get("users") or []:
        if isinstance(entry, dict) and isinstance(entry.get("username"), str):
            previous["users"][entry["username"]] = entry
    if isinstance(document.get("agent"), dict):
        previous["agent"] = document["agent"]
    return previous


def _kept_password(user: Any, password: object) -> str | None:
    """The previous password, if it is still this user's."""
    if isinstance(password, str) and password and user.check_password(password):
        return password
    return None


def _kept_api_token(user: Any, token: object) -> str | None:
    """The previous API token, if it is still an active token of this user."""
    if not isinstance(token, str) or not token:
        return None
    still_valid = ApiToken.objects.active().filter(user=user, token_digest=tokens.digest(token)).exists()
    return token if still_valid else None


def _kept_agent_token(agent: Agent | None, previous: dict[str, Any]) -> str | None:
    """The previous agent token, if it is still the active token of this very agent."""
    token = previous.get("token")
    if agent is None or previous.get("name") != agent.name or not isinstance(token, str) or not token:
        return None
    if agent.token_digest != tokens.digest(token) or not Agent.objects.active().filter(pk=agent.pk).exists():
        return None
    return token
