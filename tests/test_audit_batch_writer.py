"""Group commit: a resolved future means a committed row; one bad event fails alone."""

from __future__ import annotations

import pytest
from django.db import connection

from audit.batch_writer import AuditBatchWriter
from audit.models import AuditEvent, EventKind
from audit.recorder import Context, event_row
from identity.principal import Principal
from identity.roles import Role
from tests.factories import make_user


def test_events_are_committed_when_their_futures_resolve() -> None:
    principal = Principal(human=make_user(Role.ENGINEER))
    writer = AuditBatchWriter()
    try:
        marker = f"batch-{principal.human.pk}"
        futures = [
            writer.submit(
                event_row(
                    EventKind.QUERY_SUBMITTED,
                    principal=principal,
                    context=Context(front="wire"),
                    statement=f"SELECT {i} /* {marker} */",
                    details={"i": i},
                )
            )
            for i in range(150)  # crosses the COPY threshold too
        ]
        for future in futures:
            future.result(timeout=30)
        rows = AuditEvent.objects.filter(statement__contains=marker)
        assert rows.count() == 150
        assert sorted(row.details["i"] for row in rows) == list(range(150))
        assert {row.actor_id for row in rows} == {principal.human.pk}
    finally:
        writer.close()


def test_a_failing_event_does_not_fail_its_batch_mates() -> None:
    principal = Principal(human=make_user(Role.ENGINEER))
    with connection.cursor() as cursor:
        cursor.execute(
            """CREATE OR REPLACE FUNCTION test_reject_poison() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN IF NEW.statement = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$;
               CREATE TRIGGER test_reject_poison BEFORE INSERT ON audit_auditevent
                 FOR EACH ROW EXECUTE FUNCTION test_reject_poison();"""
        )
    writer = AuditBatchWriter()
    try:
        good = [
            writer.submit(event_row(EventKind.QUERY_SUBMITTED, principal=principal, statement=f"good {i}"))
            for i in range(5)
        ]
        bad = writer.submit(event_row(EventKind.QUERY_SUBMITTED, principal=principal, statement="poison"))
        for future in good:
            future.result(timeout=30)
        with pytest.raises(Exception, match="poisoned"):
            bad.result(timeout=30)
        assert AuditEvent.objects.filter(actor=principal.human, statement__startswith="good ").count() == 5
    finally:
        writer.close()
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER test_reject_poison ON audit_auditevent; DROP FUNCTION test_reject_poison()")
