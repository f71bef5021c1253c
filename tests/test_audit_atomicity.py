"""No access without an audit record: when the audit write fails, nothing runs (non-negotiable 6).

A trigger makes audit inserts fail for events carrying a marker. To prove a read never reached the target, the
test holds an ACCESS EXCLUSIVE lock on the table: a read that ran would block on it; one that never ran returns
while the lock is still held. The control case shows the same read does block when auditing works.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection

from approvals.models import Review, Status, Ticket
from identity.roles import Role
from tests.factories import agent_client, make_user, user_client

pytestmark = pytest.mark.usefixtures("services")
MARKER = "audit-must-fail"


@pytest.fixture
def failing_audit() -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            CREATE OR REPLACE FUNCTION test_fail_marked_audit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.statement LIKE '%{MARKER}%' OR NEW.summary LIKE '%{MARKER}%' THEN
                RAISE EXCEPTION 'audit store unavailable';
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER test_fail_marked_audit BEFORE INSERT ON audit_auditevent
              FOR EACH ROW EXECUTE FUNCTION test_fail_marked_audit();
            """
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_fail_marked_audit ON audit_auditevent")
        cursor.execute("DROP FUNCTION test_fail_marked_audit()")


def submit(client, sql: str):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/queries", {"datasource": "clinic", "sql": sql}, format="json")


def test_read_does_not_run_when_its_audit_record_cannot_be_written(services, failing_audit) -> None:  # type: ignore[no-untyped-def]
    _, client = agent_client(make_user(Role.ENGINEER))
    with psycopg.connect(services.target.owner_url) as lock_holder:
        lock_holder.execute("LOCK TABLE scratch IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        response = submit(client, f"SELECT * FROM scratch /* {MARKER} */")
        assert time.monotonic() - started < 5  # it returned while the table was locked: the read never ran
        lock_holder.rollback()
    assert response.status_code == 400
    assert response.json()["status"] == "failed" and "not run" in response.json()["error"]


def test_control_the_same_read_blocks_on_the_lock_when_auditing_works(services) -> None:  # type: ignore[no-untyped-def]
    _, client = agent_client(make_user(Role.ENGINEER))
    outcome: dict[str, object] = {}
    with psycopg.connect(services.target.owner_url) as lock_holder:
        lock_holder.execute("LOCK TABLE scratch IN ACCESS EXCLUSIVE MODE")
        reader = threading.Thread(target=lambda: outcome.update(response=submit(client, "SELECT * FROM scratch")))
        reader.start()
        time.sleep(2)
        assert reader.is_alive(), "the read should be waiting for the lock"
        lock_holder.rollback()
    reader.join(timeout=30)
    assert outcome["response"].status_code == 200  # type: ignore[attr-defined]


def test_no_ticket_without_its_audit_record(failing_audit) -> None:  # type: ignore[no-untyped-def]
    _, client = agent_client(make_user(Role.ENGINEER))
    sql = f"DELETE FROM scratch WHERE id = 46 /* {MARKER} */"
    response = submit(client, sql)
    assert response.status_code == 400 and response.json()["status"] == "failed"
    assert not Ticket.objects.filter(sql=sql).exists()


def test_no_approval_without_its_audit_record(failing_audit) -> None:  # type: ignore[no-untyped-def]
    _, client = agent_client(make_user(Role.ENGINEER))
    response = submit(client, "DELETE FROM scratch WHERE id = 47")
    ticket_id = response.json()["ticket"]["id"]
    reviewer = user_client(make_user(Role.REVIEWER))
    with pytest.raises(Exception, match="audit store unavailable"):
        reviewer.post(f"/api/v1/tickets/{ticket_id}/reviews", {"decision": "approve", "comment": MARKER}, format="json")
    assert not Review.objects.filter(ticket_id=ticket_id).exists()
    assert Ticket.objects.get(pk=ticket_id).status == Status.PENDING
