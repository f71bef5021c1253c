"""Viewing a ticket never writes false evidence, and its look-ups are made once.

The ticket page's row estimate used to be recorded as the viewer's own statement: a reviewer who opened a ticket
for ``DROP TABLE patients`` appeared in the audit trail as "denied running DROP TABLE patients". Now the look-ups
(EXPLAIN and a masked preview) are ``ticket.estimated`` / ``ticket.previewed`` events linked to the ticket, made
once per ticket, never for DDL or closed tickets, and viewing any page adds no ``query.*`` event under the viewer.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from django.test import Client

from approvals.models import Ticket
from audit.models import AuditEvent, EventKind
from identity.roles import Role
from tests.factories import agent_client, make_user, user_client

pytestmark = pytest.mark.usefixtures("services")

PAGES = ("/tickets/{id}/", "/tickets/{id}/live", "/tickets/{id}/estimate", "/tickets/{id}/row")


def held(sql: str, owner: Any = None) -> Ticket:
    _, agent_api = agent_client(owner or make_user(Role.ENGINEER, name="owner"))
    response = agent_api.post("/api/v1/queries", {"datasource": "clinic", "sql": sql}, format="json")
    assert response.status_code == 202, response.json()
    return Ticket.objects.get(pk=response.json()["ticket"]["id"])


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def view_every_page(client: Client, ticket: Ticket) -> dict[str, Any]:
    for page in PAGES:
        response = client.get(page.format(id=ticket.pk))
        assert response.status_code == 200, (page, response.status_code)
    answer: dict[str, Any] = client.get(f"/tickets/{ticket.pk}/estimate").json()
    return answer


def statements_of(user: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(actor=user, kind__startswith="query."))


def test_viewing_any_ticket_page_adds_no_statement_under_the_viewer() -> None:
    owner = make_user(Role.ENGINEER, name="owner")
    drop = held("DROP TABLE patients", owner)
    delete = held("DELETE FROM scratch WHERE id = 41", owner)
    select = held("SELECT full_name FROM patients WHERE ssn = '123-45-6789'", owner)  # held: a PHI filter
    closed = held("DELETE FROM scratch WHERE id = 42", owner)
    user_client(make_user(Role.REVIEWER)).post(
        f"/api/v1/tickets/{closed.pk}/reviews", {"decision": "reject", "comment": "not this one"}, format="json"
    )
    viewers = [make_user(Role.REVIEWER), make_user(Role.COMPLIANCE), owner]
    for viewer in viewers:
        client = signed_in(viewer)
        for ticket in (drop, delete, select, closed):
            view_every_page(client, ticket)
            view_every_page(client, ticket)  # a second visit, too
        assert statements_of(viewer) == [], viewer  # nobody "ran" DROP TABLE patients by looking at it

    # DDL and closed tickets: nothing is asked of the target, nothing is recorded, the page says why.
    for ticket, why in ((drop, "DROP TABLE changes the schema"), (closed, "the ticket is rejected")):
        answer = signed_in(viewers[0]).get(f"/tickets/{ticket.pk}/estimate").json()
        assert answer["state"] == "skipped" and why in answer["error"], answer
        assert not AuditEvent.objects.filter(
            ticket_id=ticket.pk, kind__in=[EventKind.TICKET_ESTIMATED, EventKind.TICKET_PREVIEWED]
        ).exists()
        assert Ticket.objects.get(pk=ticket.pk).lookups is None

    # The DELETE: one estimate and one preview read, by the first viewer, linked to the ticket; kept on it.
    estimated = AuditEvent.objects.filter(kind=EventKind.TICKET_ESTIMATED, ticket_id=delete.pk)
    assert [(event.actor, event.outcome) for event in estimated] == [(viewers[0], "success")]
    assert estimated.get().details["estimated_rows"] == 1
    reads = AuditEvent.objects.filter(
        kind=EventKind.TICKET_PREVIEWED, ticket_id=delete.pk, details__contains={"read_from_target": True}
    )
    assert [event.actor for event in reads] == [viewers[0]]
    assert reads.get().details["rowcount"] == 1 and "LIMIT 21" in reads.get().statement
    # Everyone else who saw the kept preview is recorded as having seen it, once each.
    shown = AuditEvent.objects.filter(
        kind=EventKind.TICKET_PREVIEWED, ticket_id=delete.pk, details__contains={"read_from_target": False}
    )
    assert sorted(event.actor.pk for event in shown) == sorted(viewer.pk for viewer in viewers[1:])
    kept = Ticket.objects.get(pk=delete.pk).lookups
    assert kept["estimate"]["rows"] == 1 and kept["preview"]["rows"] == [["41", "row 41"]]
    assert kept["computed_by"] == viewers[0].username

    # The held SELECT: an estimate (no preview for reads), judged for the humans who may open the page.
    assert AuditEvent.objects.filter(kind=EventKind.TICKET_ESTIMATED, ticket_id=select.pk).count() == 1
    assert Ticket.objects.get(pk=select.pk).lookups["preview"] is None


def test_the_preview_is_masked_for_everyone_who_may_open_the_page(services) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(services.target.owner_url) as conn:
        name, ssn, phone = conn.execute("SELECT full_name, ssn, phone FROM patients WHERE id = 17").fetchone()
    ticket = held("UPDATE patients SET phone = '555-0100' WHERE id = 17")
    reviewer = make_user(Role.REVIEWER)  # reviewers' own masks pass names in clear: the kept preview must not
    html = signed_in(reviewer).get(f"/tickets/{ticket.pk}/estimate").json()["html"]
    assert 'id="affected-rows"' in html
    assert name not in html and ssn not in html and phone not in html
    assert "***" + ssn[-4:] in html  # the SSN's mask (last four), as an engineer would see it
    assert "555-0100" in html  # the new value, written in the statement itself
    masking = Ticket.objects.get(pk=ticket.pk).lookups["preview"]["masking"]
    assert masking["full_name"]["mask"] == "hash" and masking["email"]["mask"] == "redact"
