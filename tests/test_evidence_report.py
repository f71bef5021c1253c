"""The evidence bundle's PDF, read as an auditor's tools read it: by the position of every word on its pages
(poppler's ``pdftotext -bbox``; ``make system-packages`` installs poppler-utils), never by its raw bytes.

A period with real events (an agent's reads of PHI, a denial, an approved ticket with comments, a failed sign-in,
token and policy changes, a compliance officer's search) is exported; the report must keep every word inside
the printable area, leave no page blank, fill every section with the expected people, agents and approvals, and
never print the PHI literals the statements carried.
"""

from __future__ import annotations

import re
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from audit.evidence import ExportFilters, export_evidence
from audit.evidence_report import PATIENT_ACCOUNTING_NOTE, SECTION_TITLES, EvidenceSummary
from audit.models import AuditEvent, EventKind, Outcome
from audit.recorder import Context, masking_details, record
from identity.principal import Principal
from identity.roles import Role
from tests.factories import make_agent, make_user
from tests.pdf_text import Page, assert_laid_out, body_lines, pdf_pages
from tests.tampering import chain_until_linked

SSN, PHONE, NAME = "987-65-4329", "555-0147-31", "Zebulon Quintrell"
PSEUDONYM = "ab" * 16  # a patient's pseudonymised key (policy.patient_keys): counted, never printed


@pytest.fixture
def period() -> dict[str, Any]:
    """Real events through the recorder, the way the gateway, review and policy code write them."""
    start = timezone.now() - timedelta(seconds=1)
    owner = make_user(Role.ENGINEER, name="owner")
    first_reviewer, second_reviewer = make_user(Role.REVIEWER, name="alice"), make_user(Role.REVIEWER, name="bob")
    officer = make_user(Role.COMPLIANCE, name="officer")
    agent, _ = make_agent(owner)
    as_agent = Principal(human=owner, agent=agent)
    wire = Context(front="wire", session_id="s-1")
    submitted = record(
        EventKind.QUERY_SUBMITTED,
        principal=as_agent,
        context=wire,
        datasource="clinic",
        statement=f"SELECT full_name, ssn FROM patients WHERE ssn = '{SSN}' AND full_name = '{NAME}'",
        summary="allowed: provably read-only",
        details={"verdict": "allowed", "relations": ["public.patients"]},
    )
    record(
        EventKind.QUERY_EXECUTED,
        principal=as_agent,
        context=wire,
        datasource="clinic",
        summary="3 rows returned",
        details={
            "submitted_event": submitted.pk,
            "rowcount": 3,
            **masking_details(
                {"full_name": {"mask": "initials", "phi_type": "name"}, "ssn": {"mask": "partial", "phi_type": "ssn"}}
            ),
            "preview": {"columns": ["full_name", "ssn"], "rows": [["Z. Q.", "***-**-4329"]]},
            "patients": {
                "identified": True,
                "tables": ["public.patients"],
                "key_columns": {"id": "patient_id"},
                "count": 2,
                "truncated": False,
                "pseudonyms": [f"patient_id:{PSEUDONYM}", f"patient_id:{'cd' * 16}"],
            },
        },
    )
    record(
        EventKind.QUERY_DENIED,
        principal=as_agent,
        outcome=Outcome.DENIED,
        datasource="clinic",
        statement=f"COPY (SELECT * FROM patients WHERE ssn = '{SSN}') TO PROGRAM 'curl'",
        summary="denied by policy: COPY PROGRAM",
    )
    ticket_id = 7_000_000 + submitted.pk
    record(
        EventKind.TICKET_CREATED,
        principal=as_agent,
        outcome=Outcome.HELD,
        datasource="clinic",
        ticket_id=ticket_id,
        statement=f"UPDATE patients SET phone = '{PHONE}' /* for {NAME} */ WHERE full_name = '{NAME}' -- {SSN}\n",
        summary="held for approval (2 needed): writes data",
        details={"verdict": "held", "reasons": ["writes data"], "relations": ["public.patients"], "reason": "INC-42"},
    )
    for reviewer, comment in ((first_reviewer, "matches the change request"), (second_reviewer, "")):
        record(
            EventKind.TICKET_REVIEWED,
            principal=Principal(human=reviewer),
            datasource="clinic",
            ticket_id=ticket_id,
            summary=f"approve by {reviewer.get_username()}",
            details={"decision": "approve", "comment": comment},
        )
    record(
        EventKind.TICKET_APPROVED,
        principal=Principal(human=second_reviewer),
        datasource="clinic",
        ticket_id=ticket_id,
        summary="approved (2 of 2)",
    )
    record(EventKind.TICKET_EXECUTED, principal=as_agent, datasource="clinic", ticket_id=ticket_id, summary="1 row")
    record(
        EventKind.AUTH_FAILED,
        principal=None,
        context=Context(front="http", source_address="10.1.2.3"),
        outcome=Outcome.FAILURE,
        attempted_name="mallory-bot",
        summary="API request GET /api/query: unknown token",
        details={"reason": "unknown token"},
    )
    record(EventKind.TOKEN_ISSUED, principal=as_agent, summary="token issued for the agent")
    record(
        EventKind.POLICY_CHANGED,
        principal=Principal(human=officer),
        datasource="clinic",
        summary="policy of clinic changed to version 4",
        details={"before": {"version": 3}, "after": {"version": 4}, "diff": ""},
    )
    record(EventKind.AUDIT_SEARCHED, principal=Principal(human=officer), summary="audit trail searched")
    chain_until_linked(AuditEvent.objects.filter(occurred_at__gte=start))  # export selects linked events only
    return {
        "start": start,
        "owner": owner.get_username(),
        "agent": agent.name,
        "reviewers": [first_reviewer.get_username(), second_reviewer.get_username()],
        "officer": officer,
        "ticket": ticket_id,
    }


def export_period(tmp_path: Path, period: dict[str, Any]) -> tuple[list[Page], dict[str, bytes]]:
    filters = ExportFilters(since=period["start"], until=timezone.now() + timedelta(seconds=1))
    out = tmp_path / "bundle.zip"
    export_evidence(filters, out, requested_by=Principal(human=period["officer"]))
    with zipfile.ZipFile(out) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    return pdf_pages(files["report.pdf"], tmp_path), files


def section(lines: list[str], title: str) -> list[str]:
    """The body lines between a section's heading and the next one."""
    start = lines.index(title)
    later = [lines.index(other) for other in SECTION_TITLES if other in lines and lines.index(other) > start]
    return lines[start + 1 : min(later, default=len(lines))]


def test_every_word_is_on_the_page_and_every_section_is_filled(tmp_path: Path, period: dict[str, Any]) -> None:
    pages, _ = export_period(tmp_path, period)
    assert_laid_out(pages)
    lines = body_lines(pages)
    for title in SECTION_TITLES:
        assert title in lines, f"missing section {title!r}"
        assert section(lines, title), f"section {title!r} has no content"
    assert [lines.index(title) for title in SECTION_TITLES] == sorted(lines.index(t) for t in SECTION_TITLES)


def test_the_sections_name_the_people_agents_and_approvals(tmp_path: Path, period: dict[str, Any]) -> None:
    pages, files = export_period(tmp_path, period)
    lines = body_lines(pages)
    text = "\n".join(lines)
    words = " ".join(text.split())
    owner, agent, officer = period["owner"], period["agent"], period["officer"].get_username()

    cover = " ".join(section(lines, SECTION_TITLES[0]))
    assert "Chain status verified" in cover and "clinic" in cover and f"Generated by {officer}" in cover
    manifest = files["manifest.json"].decode()
    for name in ("events.jsonl", "events.csv", "chain.jsonl", "checkpoints.jsonl", "public_key.pem"):
        digest = re.search(rf'"{re.escape(name)}": "([0-9a-f]{{64}})"', manifest)
        assert digest and digest.group(1) in words.replace(" ", ""), name  # a long digest may wrap in its cell
    assert "manifest.json lists the SHA-256" in cover

    people = " ".join(section(lines, SECTION_TITLES[1]))
    for person in (owner, *period["reviewers"], officer):  # reviewers and the officer too
        assert person in people, person
    # owner via the agent: 3 statements (allowed, denied, held), 1 each, 3 rows, 2 PHI columns
    assert re.search(rf"{owner} {agent} 3 1 1 1 3 2 0 0", people), people

    agents = " ".join(section(lines, SECTION_TITLES[2]))
    assert re.search(rf"{agent} {owner} 3 1 1 1 1 3 2", agents), agents

    phi = " ".join(section(lines, SECTION_TITLES[3]))
    assert f"{owner} name (1 columns), ssn (1 columns)" in phi

    accounting = " ".join(section(lines, SECTION_TITLES[4]))
    assert " ".join(PATIENT_ACCOUNTING_NOTE.split()[:12]) in accounting
    assert f"{owner} clinic 2 by patient_id 1 0 -" in accounting, accounting
    assert PSEUDONYM not in " ".join(lines)
    assert f"{owner} {agent} clinic public.patients 1 3" in accounting

    approvals = " ".join(section(lines, SECTION_TITLES[5]))
    assert f"Ticket {period['ticket']}: executed" in approvals
    assert f"Requested by {owner} via agent {agent}" in approvals and "Reason given INC-42" in approvals
    for reviewer in period["reviewers"]:
        assert f"{reviewer} approve" in approvals
    assert "matches the change request" in approvals
    assert "UPDATE patients SET phone = $1 WHERE full_name = $2" in approvals

    assert "denied by policy: COPY PROGRAM" in " ".join(section(lines, SECTION_TITLES[6]))
    assert "mallory-bot http 10.1.2.3 unknown token" in " ".join(section(lines, SECTION_TITLES[7]))
    assert f"issued {owner} {agent}" in " ".join(section(lines, SECTION_TITLES[8]))
    assert re.search(rf"{officer} clinic 3 4 policy of clinic", " ".join(section(lines, SECTION_TITLES[9])))

    for secret in (SSN, PHONE, NAME, "Zebulon", "Quintrell", "4329"):
        assert secret not in words.replace(" ", "") and secret not in text, secret


def test_an_empty_period_still_lays_out(tmp_path: Path) -> None:
    moment = timezone.now() - timedelta(days=3650)
    out = tmp_path / "empty.zip"
    export_evidence(ExportFilters(since=moment, until=moment + timedelta(seconds=1)), out, requested_by=None)
    with zipfile.ZipFile(out) as archive:
        pages = pdf_pages(archive.read("report.pdf"), tmp_path)
    assert_laid_out(pages)
    lines = body_lines(pages)
    for title in SECTION_TITLES:
        assert section(lines, title), f"section {title!r} has no content"


def test_an_event_opened_counts_as_an_audit_action_like_a_search() -> None:
    summary = EvidenceSummary()
    for kind in (EventKind.AUDIT_SEARCHED, EventKind.AUDIT_VIEWED, EventKind.TICKET_RESULT_READ):
        summary.add({"kind": str(kind), "actor_name": "olive", "occurred_at": "2031-01-01T00:00:00Z", "summary": ""})
    assert summary.people["olive"].audit_actions == 2 and summary.people["olive"].other == 1


def test_every_action_on_the_audit_trail_itself_counts_as_an_audit_action() -> None:
    summary = EvidenceSummary()
    audit_kinds = [kind for kind in EventKind if kind.value.startswith("audit.")]
    assert EventKind.AUDIT_LITERALS_REVEALED in audit_kinds
    for n, kind in enumerate(audit_kinds, start=1):
        at = "2031-01-01T00:00:00Z"
        summary.add(
            {"id": n, "kind": str(kind), "actor_name": "olive", "occurred_at": at, "summary": "", "details": {}}
        )
    assert summary.people["olive"].audit_actions == len(audit_kinds) and summary.people["olive"].other == 0
