"""Pending tickets expire; approvals are valid for execution only for a limited time."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.conf import settings
from django.utils import timezone

from approvals.execution import execute_ticket
from approvals.lifecycle import expire_overdue
from approvals.models import Status, Ticket
from audit.models import AuditEvent, EventKind
from identity.roles import Role
from tests.factories import agent_client, make_user, user_client

pytestmark = pytest.mark.usefixtures("services")


def held_ticket() -> tuple[int, object]:
    _, client = agent_client(make_user(Role.ENGINEER))
    response = client.post(
        "/api/v1/queries", {"datasource": "clinic", "sql": "DELETE FROM scratch WHERE id = 44"}, format="json"
    )
    assert response.status_code == 202
    return int(response.json()["ticket"]["id"]), client


def test_default_windows() -> None:
    ticket_id, _ = held_ticket()
    ticket = Ticket.objects.get(pk=ticket_id)
    assert ticket.expires_at - ticket.created_at == timedelta(hours=1)
    assert settings.APPROVAL_VALIDITY_SECONDS == 15 * 60


def test_pending_ticket_expires_and_cannot_be_approved() -> None:
    ticket_id, agent_api = held_ticket()
    reviewer = user_client(make_user(Role.REVIEWER))
    with time_machine.travel(timezone.now() + timedelta(hours=1, seconds=1)):
        response = reviewer.post(f"/api/v1/tickets/{ticket_id}/reviews", {"decision": "approve"}, format="json")
        assert response.status_code == 409
        assert agent_api.get(f"/api/v1/tickets/{ticket_id}").json()["status"] == "expired"
    assert AuditEvent.objects.filter(kind=EventKind.TICKET_EXPIRED, ticket_id=ticket_id).count() == 1


def test_sweep_expires_only_overdue_tickets() -> None:
    overdue_id, _ = held_ticket()
    fresh_id, _ = held_ticket()
    now = timezone.now()  # tickets are created by the gateway process, so backdate rather than travel
    Ticket.objects.filter(pk=overdue_id).update(
        created_at=now - timedelta(hours=2), expires_at=now - timedelta(seconds=1)
    )
    expire_overdue()
    assert Ticket.objects.get(pk=overdue_id).status == Status.EXPIRED
    assert Ticket.objects.get(pk=fresh_id).status == Status.PENDING


def test_wait_reports_expiry_to_the_agent() -> None:
    ticket_id, agent_api = held_ticket()
    with time_machine.travel(timezone.now() + timedelta(hours=2)):
        body = agent_api.get(f"/api/v1/tickets/{ticket_id}/wait?timeout=1").json()
    assert body["status"] == "expired"


def test_lapsed_approval_never_executes(services, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    services.worker.stop()  # so the approval's execution task waits in the queue
    try:
        ticket_id, _ = held_ticket()
        reviewer = user_client(make_user(Role.REVIEWER))
        assert (
            reviewer.post(f"/api/v1/tickets/{ticket_id}/reviews", {"decision": "approve"}, format="json").status_code
            == 201
        )
        assert Ticket.objects.get(pk=ticket_id).status == Status.APPROVED
        monkeypatch.setenv("DATASOURCE_CLINIC_WRITE_URL", services.target.write_url)  # play the executor in-process
        with time_machine.travel(timezone.now() + timedelta(minutes=16)):
            report = execute_ticket(ticket_id)
        assert report.status == Status.FAILED and not report.ran_now
        ticket = Ticket.objects.get(pk=ticket_id)
        assert ticket.status == Status.FAILED and "approval expired" in ticket.error
        with psycopg.connect(services.target.owner_url) as conn:
            assert conn.execute("SELECT count(*) FROM scratch WHERE id = 44").fetchone() == (1,)
    finally:
        monkeypatch.delenv("DATASOURCE_CLINIC_WRITE_URL", raising=False)
        from tests import services as svc

        services.worker = svc.worker(services.target.write_url, services.log_dir)
