"""PHI hygiene in the audit itself (issue 16): private files, masked statement literals, masked previews.

1. Every file the audit writes (journal slots, segments and their ``.new`` temporaries, evidence bundles) is
   0600 in a 0700 directory, whatever the process umask, and a directory left laxer is tightened.
2. Statement literals are masked by PostgreSQL's scanner wherever an audit viewer sees them (API search, search
   page, replay, bundle and its CSV/PDF); a compliance officer reveals one event's with a POST that is audited.
3. What a read's record keeps as its preview is what the client was sent: masked, on HTTP and on the wire.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.test import Client, override_settings
from django.utils import timezone

from audit.evidence import ExportFilters, export_evidence
from audit.evidence_jobs import run_export
from audit.journal import AuditJournal
from audit.models import AuditEvent, EventKind, EvidenceExport
from audit.recorder import Context, record
from audit.statement_text import WITHHELD, mask_literals
from audit.verify import verify_bundle
from identity.principal import Principal
from identity.roles import Role
from tests.factories import agent_client, make_agent, make_user, user_client
from tests.services import wait_until
from tests.tampering import chain_until_linked

SSN = "123-45-6789"
PHI_STATEMENT = f"SELECT id, full_name FROM patients WHERE ssn = '{SSN}' AND id = 41 /* for {SSN} */"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """The default umask of most hosts (022): files come out 0644 unless their writer sets a mode."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# ------------------------------------------------------------------------------------------- 1. file modes


def test_journal_directories_are_0700_and_its_files_0600(tmp_path: Path, lax_umask: None) -> None:
    root = tmp_path / "journal"
    root.mkdir(mode=0o755)  # an operator's directory, made before the gateway ran
    os.chmod(root, 0o755)
    journal = AuditJournal(root, ship_interval=3600)
    try:
        slot = root / "slot-0"
        assert mode(root) == 0o700 and mode(slot) == 0o700
        files = sorted(slot.iterdir())
        # The lock, the journal id and the pre-zeroed segments (written as ``.new`` and renamed, so a segment's
        # mode is its temporary's mode).
        assert {path.suffix for path in files} >= {"", ".seg"}
        for path in files:
            assert mode(path) == 0o600, (path.name, oct(mode(path)))
    finally:
        journal.close(timeout=5)


def test_a_bundle_is_0600_and_a_directory_made_for_it_0700(tmp_path: Path, lax_umask: None) -> None:
    officer = Principal(human=make_user(Role.COMPLIANCE))
    now = timezone.now()
    out = tmp_path / "new-folder" / "bundle.zip"
    export_evidence(
        ExportFilters(since=now - timedelta(minutes=5), until=now + timedelta(days=1)), out, requested_by=officer
    )
    assert mode(out) == 0o600
    assert mode(out.parent) == 0o700
    assert not list(out.parent.glob("*.partial"))


def test_an_export_reports_progress_from_inside_its_read_only_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress is reported at most every half second: an export that took longer (a busy machine, a long period)
    wrote its progress inside the snapshot transaction, which is read-only, and failed."""
    import audit.evidence_jobs

    monkeypatch.setattr(audit.evidence_jobs, "_PROGRESS_EVERY_SECONDS", 0.0)  # every report, as on a slow export
    officer = Principal(human=make_user(Role.COMPLIANCE))
    record(EventKind.AUDIT_SEARCHED, principal=officer, context=Context(front="web"), summary="one event")
    now = timezone.now()
    export = EvidenceExport.objects.create(
        requested_by=make_user(Role.COMPLIANCE),
        filters=ExportFilters(since=now - timedelta(minutes=5), until=now + timedelta(days=1)).as_manifest(),
    )
    with override_settings(EVIDENCE_DIR=tmp_path):
        assert run_export(export.pk) == "done"
    export.refresh_from_db()
    assert export.progress == 100 and export.file_name


def test_the_web_export_tightens_the_evidence_directory(tmp_path: Path, lax_umask: None) -> None:
    officer = make_user(Role.COMPLIANCE)
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    os.chmod(evidence, 0o755)
    now = timezone.now()
    export = EvidenceExport.objects.create(
        requested_by=officer,
        filters=ExportFilters(since=now - timedelta(minutes=5), until=now + timedelta(days=1)).as_manifest(),
    )
    with override_settings(EVIDENCE_DIR=evidence):
        assert run_export(export.pk) == "done"
    export.refresh_from_db()
    assert mode(evidence) == 0o700
    assert mode(evidence / export.file_name) == 0o600


# ------------------------------------------------------------------------------------------- 2. literals


@pytest.mark.parametrize(
    ("statement", "masked"),
    [
        (PHI_STATEMENT, "SELECT id, full_name FROM patients WHERE ssn = '…' AND id = '…' /*…*/"),
        (
            f"SELECT $q${SSN}$q$, E'{SSN}\\'', B'101', X'ff', 4.5e1 -- {SSN}\nFROM t",
            "SELECT '…', '…', '…', '…', '…' /*…*/\nFROM t",
        ),
        ("SELECT id FROM patients WHERE ssn = $1", "SELECT id FROM patients WHERE ssn = $1"),
        ('SELECT "ssn 1" FROM t', 'SELECT "ssn 1" FROM t'),
        (f"SELECT '{SSN}", WITHHELD),  # unterminated: the scanner cannot read it, so nothing of it is shown
        ("", ""),
    ],
)
def test_literals_and_comments_are_masked_by_the_postgres_scanner(statement: str, masked: str) -> None:
    assert mask_literals(statement) == masked


@pytest.fixture
def phi_statement_event() -> AuditEvent:
    owner = make_user(Role.ENGINEER)
    agent, _ = make_agent(owner)
    return record(
        EventKind.QUERY_SUBMITTED,
        principal=Principal(human=owner, agent=agent),
        context=Context(front="http", session_id=f"hygiene-{agent.pk}"),
        datasource="clinic",
        statement=PHI_STATEMENT,
        details={"verdict": "allowed"},
    )


def test_the_search_api_shows_statements_masked(phi_statement_event: AuditEvent) -> None:
    response = user_client(make_user(Role.COMPLIANCE)).get(
        "/api/v1/audit/events", {"session": phi_statement_event.session_id}
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert SSN not in body
    [event] = response.json()["results"]
    assert event["statement"] == mask_literals(PHI_STATEMENT)


def test_search_and_replay_pages_show_statements_masked(phi_statement_event: AuditEvent) -> None:
    client = Client()
    client.force_login(make_user(Role.COMPLIANCE))
    for url in ("/audit/", f"/audit/sessions/{phi_statement_event.session_id}/"):
        html = client.get(url, {"session": phi_statement_event.session_id}).content.decode()
        assert "WHERE ssn = &#x27;…&#x27;" in html, url
        assert SSN not in html, url
        assert f"/audit/events/{phi_statement_event.pk}/reveal" in html, url


def test_a_compliance_officer_reveals_literals_once_with_an_audited_post(phi_statement_event: AuditEvent) -> None:
    officer = make_user(Role.COMPLIANCE)
    url = f"/audit/events/{phi_statement_event.pk}/reveal"
    client = Client(enforce_csrf_checks=True)
    client.force_login(officer)
    assert client.get(url).status_code == 405  # never by a link or a prefetch
    assert client.post(url).status_code == 403  # no CSRF token
    assert not AuditEvent.objects.filter(kind=EventKind.AUDIT_LITERALS_REVEALED, actor=officer).exists()
    page = client.get("/audit/", {"session": phi_statement_event.session_id})
    token = page.cookies["csrftoken"].value
    response = client.post(url, {"csrfmiddlewaretoken": token})
    assert response.status_code == 200
    assert SSN in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    revealed = AuditEvent.objects.get(kind=EventKind.AUDIT_LITERALS_REVEALED, actor=officer)
    assert revealed.actor == officer and revealed.details["event"] == phi_statement_event.pk
    assert revealed.front == "web"


def test_only_compliance_officers_may_reveal(phi_statement_event: AuditEvent) -> None:
    for role in (Role.ENGINEER, Role.REVIEWER, Role.ADMIN):
        client = Client()
        client.force_login(make_user(role))
        assert client.post(f"/audit/events/{phi_statement_event.pk}/reveal").status_code == 403, role
    assert not AuditEvent.objects.filter(
        kind=EventKind.AUDIT_LITERALS_REVEALED, details__event=phi_statement_event.pk
    ).exists()


def _bundle(
    tmp_path: Path, event: AuditEvent, **options: bool
) -> tuple[dict[str, object], list[dict[str, object]], str, bytes]:
    chain_until_linked([event])
    now = timezone.now()
    out = tmp_path / ("revealed.zip" if options else "masked.zip")
    officer = Principal(human=make_user(Role.COMPLIANCE))
    result = export_evidence(
        ExportFilters(since=now - timedelta(minutes=5), until=now + timedelta(days=1)),
        out,
        requested_by=officer,
        **options,
    )
    assert result.chain_ok, result.chain_status
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        events = [json.loads(line) for line in archive.read("events.jsonl").splitlines()]
        sheet = archive.read("events.csv").decode()
        pdf = archive.read("report.pdf")
    return manifest, events, sheet, pdf + b"\n" + verify_bundle(str(out)).encode()


def test_a_bundle_carries_masked_statements_says_so_and_verifies(
    tmp_path: Path, phi_statement_event: AuditEvent
) -> None:
    manifest, events, sheet, rest = _bundle(tmp_path, phi_statement_event)
    assert manifest["statement_literals"] == "masked"
    [event] = [event for event in events if event["id"] == phi_statement_event.pk]
    assert event["statement"] == mask_literals(PHI_STATEMENT) and event["statement_literals"] == "masked"
    assert SSN not in json.dumps(events) and SSN not in sheet and SSN.encode() not in rest
    assert b"bundle OK" in rest and b"statement literals masked" in rest
    exported = AuditEvent.objects.filter(kind=EventKind.AUDIT_EXPORTED).latest("id")
    assert exported.details["statement_literals"] == "masked"


def test_a_revealed_bundle_is_audited_as_such_and_rehashes_in_full(
    tmp_path: Path, phi_statement_event: AuditEvent
) -> None:
    manifest, events, sheet, rest = _bundle(tmp_path, phi_statement_event, reveal_literals=True)
    assert manifest["statement_literals"] == "revealed"
    assert any(event["statement"] == PHI_STATEMENT for event in events) and SSN in sheet
    assert b"bundle OK" in rest and b"statement literals masked" not in rest
    exported = AuditEvent.objects.filter(kind=EventKind.AUDIT_EXPORTED).latest("id")
    assert exported.details["statement_literals"] == "revealed" and "revealed" in exported.summary


def test_a_masked_marker_in_a_bundle_that_says_revealed_fails_verification(
    tmp_path: Path, phi_statement_event: AuditEvent
) -> None:
    from audit.verify import verify_segment

    manifest, events, _, _ = _bundle(tmp_path, phi_statement_event)
    masked = [event for event in events if event.get("statement_literals") == "masked"]
    assert masked
    with zipfile.ZipFile(tmp_path / "masked.zip") as archive:
        links = [json.loads(line) for line in archive.read("chain.jsonl").splitlines()]
        checkpoints = [json.loads(line) for line in archive.read("checkpoints.jsonl").splitlines()]
        pem = archive.read("public_key.pem")
    from audit.verify import _public_key_raw

    start = int(manifest["segment"]["start_anchor"])  # type: ignore[index]
    key = _public_key_raw(pem)
    assert not verify_segment(links, checkpoints, events, key, start, masked_allowed=True).problems
    problems = verify_segment(links, checkpoints, events, key, start, masked_allowed=False).problems
    assert any("marked masked" in problem for problem in problems)


def test_the_web_export_form_asks_for_revealed_literals(tmp_path: Path) -> None:
    officer = make_user(Role.COMPLIANCE)
    client = Client()
    client.force_login(officer)
    response = client.post(
        "/audit/exports/", {"since": "2020-01-01", "until": "2999-01-01", "statement_literals": "revealed"}
    )
    assert response.status_code == 302
    export = EvidenceExport.objects.of(officer).get()
    assert export.filters["statement_literals"] == "revealed"


# ------------------------------------------------------------------------------------------- 3. previews


def _true_patient(services) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    with psycopg.connect(services.target.owner_url) as owner:
        row = owner.execute("SELECT ssn, full_name FROM patients WHERE ssn IS NOT NULL ORDER BY id LIMIT 1").fetchone()
    return row[0], row[1]


def _details_of(agent: object) -> str:
    return json.dumps(list(AuditEvent.objects.filter(agent=agent).values_list("details", flat=True)))


def _assert_masked_previews(agent: object, truth: tuple[str, str]) -> None:
    executed = list(AuditEvent.objects.filter(agent=agent, kind=EventKind.QUERY_EXECUTED))
    assert executed and all(event.details["preview"]["rows"] for event in executed)  # previews were kept
    details = _details_of(agent)
    for value in truth:
        assert value not in details, "a raw PHI value is stored in an audit record's details"


def test_http_previews_hold_only_masked_values(services) -> None:  # type: ignore[no-untyped-def]
    truth = _true_patient(services)
    agent, client = agent_client(make_user(Role.ENGINEER))
    response = client.post(
        "/api/v1/queries",
        {"datasource": "clinic", "sql": "SELECT id, ssn, full_name FROM patients ORDER BY id LIMIT 3"},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert response.json()["rows"]
    _assert_masked_previews(agent, truth)


def test_wire_previews_hold_only_masked_values_on_every_path(services) -> None:  # type: ignore[no-untyped-def]
    truth = _true_patient(services)
    agent, token = make_agent(make_user(Role.ENGINEER))
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Simple protocol (the fast path), then extended with a bind parameter (the relay).
        assert conn.execute("SELECT id, ssn, full_name FROM patients ORDER BY id LIMIT 3").fetchall()
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT id, ssn, full_name FROM patients WHERE id > %s ORDER BY id LIMIT 3", (0,)).fetchall()
    wait_until(
        lambda: AuditEvent.objects.filter(agent=agent, kind=EventKind.QUERY_EXECUTED).count() >= 2 or None,
        15,
        what="both reads' executed records",
    )
    time.sleep(0.2)
    _assert_masked_previews(agent, truth)
