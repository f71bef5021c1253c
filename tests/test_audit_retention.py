"""Retention purge: refuses anything younger than the retention period, and the chain still verifies after.

Runs against a control-plane database of its own: a purge cuts a prefix of the chain, which in the shared
database belongs to every other test.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, connections, transaction
from django.utils import timezone

from audit.chain import extend_chain, verify_chain
from audit.models import AuditEvent, ChainLink, Checkpoint, CheckpointReason, EventKind
from audit.recorder import record
from audit.retention import RetentionRefused, purge
from identity.principal import Principal
from identity.roles import Role
from tests import environment
from tests.factories import make_user
from tests.test_audit_evidence import export, offline_verify


@pytest.fixture
def own_control_plane() -> Iterator[None]:
    name = f"{environment.CONTROL_DB}_retention"
    with psycopg.connect(environment.ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    default = connections["default"]
    original = default.settings_dict["NAME"]
    default.close()
    default.settings_dict["NAME"] = name
    try:
        call_command("migrate", verbosity=0)
        yield
    finally:
        default.close()
        default.settings_dict["NAME"] = original
        with psycopg.connect(environment.ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def history(principal: Principal, count: int, label: str) -> list[AuditEvent]:
    return [record(EventKind.TOKEN_ISSUED, principal=principal, summary=f"{label} {n}") for n in range(count)]


def test_purge_keeps_young_events_and_a_verifiable_chain(own_control_plane: None, tmp_path: Path) -> None:
    principal = Principal(human=make_user(Role.ENGINEER))
    seven_years_ago = timezone.now() - timedelta(days=7 * 366)
    with time_machine.travel(seven_years_ago, tick=True):
        old = history(principal, 5, "old")
    young = history(principal, 3, "young")
    extend_chain()
    assert verify_chain().ok

    with pytest.raises(RetentionRefused):
        purge(timezone.now() - timedelta(days=365))
    with pytest.raises(CommandError, match="refused"):
        call_command("purge_audit", "--before", str((timezone.now() - timedelta(days=30)).date()))
    assert purge(dry_run=True).events == 5
    assert AuditEvent.objects.filter(pk__in=[e.pk for e in old]).count() == 5

    call_command("purge_audit")
    assert not AuditEvent.objects.filter(pk__in=[e.pk for e in old]).exists()
    assert AuditEvent.objects.filter(pk__in=[e.pk for e in young]).count() == 3
    assert ChainLink.objects.order_by("seq").values_list("seq", flat=True)[0] == 6
    anchor = Checkpoint.objects.get(seq=5)
    assert anchor.reason in (CheckpointReason.PURGE, CheckpointReason.PERIODIC)
    purged = AuditEvent.objects.get(kind=EventKind.AUDIT_PURGED)
    assert purged.details["events"] == 5 and purged.actor_name.startswith("os:")
    verdict = verify_chain()
    assert verdict.ok, verdict.problem

    history(principal, 2, "after the purge")
    extend_chain()
    assert verify_chain().ok
    assert purge().events == 0  # nothing old is left
    bundle = export(tmp_path)
    result = offline_verify(bundle)
    assert result.returncode == 0, result.stderr


def test_the_database_refuses_to_purge_young_events_whatever_the_caller_says(own_control_plane: None) -> None:
    event = history(Principal(human=make_user(Role.ENGINEER)), 1, "young")[0]
    extend_chain()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL phigate.audit_purge = 'on'")
        cursor.execute("DELETE FROM audit_chainlink WHERE event_id = %s", [event.pk])
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL phigate.audit_purge = 'on'")
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [event.pk])
    assert AuditEvent.objects.filter(pk=event.pk).exists()
    assert verify_chain().ok


def test_everything_purged_still_verifies(own_control_plane: None) -> None:
    principal = Principal(human=make_user(Role.ENGINEER))
    with time_machine.travel(timezone.now() - timedelta(days=7 * 366), tick=True):
        history(principal, 4, "old")
    extend_chain()
    assert purge().events == 4
    assert not ChainLink.objects.exists()
    verdict = verify_chain()
    assert verdict.ok, verdict.problem
