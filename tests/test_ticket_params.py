"""Bind parameters of a statement held on the wire: reviewers see exactly the values they approve.

A real psycopg client sends a parameterised UPDATE through the real gateway (extended protocol, one value in
binary format, one whose type it leaves to PostgreSQL). The values, with their types and the raw bytes of the
binary one, are on the ticket page, in the ticket API and in the session replay; the estimate and the preview run
with them; the approval's digest covers them (a changed value does not run); and an agent can give the reason for
a wire statement in a leading ``/* phigate-reason: ... */`` comment.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from django.test import Client

from approvals.models import Review, Status, Ticket
from approvals.params import StatementParams, statement_digest
from audit.models import AuditEvent, EventKind
from identity.roles import Role
from tests.factories import make_agent, make_user, user_client
from tests.services import wait_until

pytestmark = pytest.mark.usefixtures("services")


@pytest.fixture
def wire(services) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    owner = make_user(Role.ENGINEER, name="owner")
    agent, token = make_agent(owner)
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    return {"agent": agent, "dsn": dsn, "owner_url": services.target.owner_url}


def hold(dsn: str, sql: str, params: tuple[Any, ...]) -> Ticket:
    """Send a write through the gateway (psycopg, extended protocol); it is held: HA001 with the ticket id."""
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as raised:
        conn.execute(sql, params)
    assert raised.value.sqlstate == "HA001", raised.value
    return Ticket.objects.get(pk=int(str(raised.value.diag.message_primary).rsplit(" ", 1)[1]))


def dose_of(owner_url: str, prescription: int) -> str:
    with psycopg.connect(owner_url) as conn:
        row = conn.execute("SELECT dose FROM prescriptions WHERE id = %s", (prescription,)).fetchone()
    assert row is not None
    return str(row[0])


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


UPDATE = (
    "/* phigate-reason: pharmacist corrected the dose */ "
    "UPDATE prescriptions SET dose = %s WHERE id = %b AND encounter_id IS NOT NULL"
)


def test_parameters_are_shown_with_types_on_the_page_in_the_api_and_in_the_replay(wire) -> None:  # type: ignore[no-untyped-def]
    ticket = hold(wire["dsn"], UPDATE, ("5 mg twice daily", 901))
    # psycopg: the str goes as text with no declared type, the int as a binary smallint (``%b``).
    assert ticket.sql.endswith("SET dose = $1 WHERE id = $2 AND encounter_id IS NOT NULL")
    assert ticket.statement_params is not None
    assert ticket.statement_params.formats == (0, 1) and ticket.statement_params.type_oids[0] == 0
    assert ticket.reason == "pharmacist corrected the dose"  # from the leading comment, read by the scanner

    reviewer = make_user(Role.REVIEWER)
    api = user_client(reviewer).get(f"/api/v1/tickets/{ticket.pk}").json()
    assert api["reason"] == "pharmacist corrected the dose"
    first, second = api["params"]
    assert first == {
        "position": 1,
        "type": "text",  # undeclared by the client: resolved by PostgreSQL when the ticket was opened
        "type_declared": False,
        "format": "text",
        "null": False,
        "value": "5 mg twice daily",
        "decoded": True,
        "hex": None,
    }
    assert second == {
        "position": 2,
        "type": "smallint",
        "type_declared": True,
        "format": "binary",
        "null": False,
        "value": "901",
        "decoded": True,
        "hex": "0385",  # the exact bytes: 901 as a big-endian int2
    }

    page = signed_in(reviewer).get(f"/tickets/{ticket.pk}/").content.decode()
    table = page[page.index('id="ticket-params"') : page.index("</table>", page.index('id="ticket-params"'))]
    assert "$1" in table and "5 mg twice daily" in table and "inferred by PostgreSQL" in table
    assert "$2" in table and "smallint" in table and "901" in table and "0385" in table and "binary" in table
    assert "pharmacist corrected the dose" in page
    assert "and of these 2 parameter values" in page  # what the SHA-256 covers, said where it is shown

    created = AuditEvent.objects.get(kind=EventKind.TICKET_CREATED, ticket_id=ticket.pk)
    replay = signed_in(make_user(Role.COMPLIANCE)).get(f"/audit/sessions/{created.session_id}/").content.decode()
    step = replay[replay.index("SET dose = $1") :]
    params = step[step.index('<table class="params">') : step.index("</table>")]
    assert "5 mg twice daily" in params and "smallint" in params and "0385" in params


def test_an_approval_covers_exactly_the_parameter_values(wire) -> None:  # type: ignore[no-untyped-def]
    base = StatementParams(values=(b"5 mg", b"\x00\x07"), formats=(0, 1), type_oids=(0, 21))
    sql = "UPDATE prescriptions SET dose = $1 WHERE id = $2"
    digests = {
        statement_digest(sql, base),
        statement_digest(sql, StatementParams(values=(b"6 mg", b"\x00\x07"), formats=(0, 1), type_oids=(0, 21))),
        statement_digest(sql, StatementParams(values=(b"5 mg", b"\x00\x08"), formats=(0, 1), type_oids=(0, 21))),
        statement_digest(sql, StatementParams(values=(b"5 mg", b"\x00\x07"), formats=(0, 0), type_oids=(0, 21))),
        statement_digest(sql, StatementParams(values=(b"5 mg", b"\x00\x07"), formats=(0, 1), type_oids=(25, 21))),
        statement_digest(sql, None),
    }
    assert len(digests) == 6  # value, format, type: each is part of what is approved

    reviewer = user_client(make_user(Role.REVIEWER))
    approved = hold(wire["dsn"], UPDATE, ("7 mg nightly", 902))
    assert approved.sql_sha256 == statement_digest(approved.sql, approved.statement_params)
    approve = {"decision": "approve"}
    assert reviewer.post(f"/api/v1/tickets/{approved.pk}/reviews", approve, format="json").status_code == 201
    assert Review.objects.get(ticket=approved).sql_sha256 == approved.sql_sha256  # the reviewer saw these values
    wait_until(lambda: Ticket.objects.get(pk=approved.pk).status == Status.EXECUTED, 30, what="execution")
    assert dose_of(wire["owner_url"], 902) == "7 mg nightly"  # ran with exactly the values shown

    before = dose_of(wire["owner_url"], 903)
    tampered = hold(wire["dsn"], UPDATE, ("8 mg", 903))
    swapped = [dict(item) for item in tampered.params]
    swapped[0]["value"] = "OTAwIG1n"  # base64 of "900 mg": what a writer to the control plane might slip in
    Ticket.objects.filter(pk=tampered.pk).update(params=swapped)
    assert reviewer.post(f"/api/v1/tickets/{tampered.pk}/reviews", approve, format="json").status_code == 201
    wait_until(lambda: Ticket.objects.get(pk=tampered.pk).status == Status.FAILED, 30, what="refusal")
    assert "differ from the approved digest" in Ticket.objects.get(pk=tampered.pk).error
    assert dose_of(wire["owner_url"], 903) == before  # nothing ran


def test_the_estimate_and_the_preview_run_with_the_parameters(wire) -> None:  # type: ignore[no-untyped-def]
    current = dose_of(wire["owner_url"], 904)
    ticket = hold(wire["dsn"], UPDATE, ("10 mg", 904))
    reviewer = make_user(Role.REVIEWER)
    answer = signed_in(reviewer).get(f"/tickets/{ticket.pk}/estimate").json()
    assert answer["state"] == "done", answer
    assert answer["estimated_rows"] == 1 and not answer["error"]  # not "there is no parameter $2"
    html = answer["html"]
    assert 'id="affected-rows"' in html and "904" in html
    assert current in html and "10 mg" in html  # the SET column: its value now, beside the new one
    estimated = AuditEvent.objects.get(kind=EventKind.TICKET_ESTIMATED, ticket_id=ticket.pk)
    assert estimated.actor == reviewer and estimated.details["params"] == 2
    assert "$2" in estimated.statement and "904" not in estimated.statement  # bound, never pasted into the text


def test_a_binary_date_and_a_null_parameter(wire) -> None:  # type: ignore[no-untyped-def]
    ticket = hold(
        wire["dsn"],
        "UPDATE encounters SET notes = %s WHERE admitted_at < %b AND id = %b",
        (None, dt.date(2001, 2, 3), 905),
    )
    api = user_client(make_user(Role.REVIEWER)).get(f"/api/v1/tickets/{ticket.pk}").json()
    notes, date, _ = api["params"]
    assert notes["null"] is True and notes["value"] is None
    assert date == {
        "position": 2,
        "type": "date",
        "type_declared": True,
        "format": "binary",
        "null": False,
        "value": "2001-02-03",
        "decoded": True,
        "hex": "0000018f",  # 399 days after 2000-01-01
    }
