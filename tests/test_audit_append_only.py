"""The database refuses to change or remove audit events, whoever asks through the application's connection."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError

from audit.models import AuditEvent, EventKind
from audit.recorder import record
from identity.principal import Principal
from identity.roles import Role
from tests.factories import make_user


@pytest.fixture
def event() -> AuditEvent:
    return record(EventKind.TOKEN_ISSUED, principal=Principal(human=make_user(Role.ENGINEER)), summary="original")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_auditevent SET summary = 'rewritten' WHERE id = %s",
        "DELETE FROM audit_auditevent WHERE id = %s",
    ],
)
def test_update_and_delete_are_refused(event: AuditEvent, statement: str) -> None:
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, [event.pk])
    assert AuditEvent.objects.get(pk=event.pk).summary == "original"


def test_orm_update_and_delete_are_refused_too(event: AuditEvent) -> None:
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(summary="rewritten")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.filter(pk=event.pk, summary="original").exists()


def test_truncate_is_refused(event: AuditEvent) -> None:
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("TRUNCATE audit_auditevent CASCADE")
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_inserts_still_work(event: AuditEvent) -> None:
    assert AuditEvent.objects.filter(pk=event.pk).exists()
