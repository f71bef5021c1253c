"""The accounting of disclosures (45 CFR 164.528; policy.patient_keys, audit.accounting): which patients' records
each result carried, pseudonymised in its ``query.executed`` record, on every front, and who read one patient.

In-process: which output columns are patient keys (lineage, never a guess), the wire reader of DataRow frames
(text, binary, NULL, malformed, the bound) and the accounting key's own checks. End to end (real gateway, real
clients): the wire's simple and extended protocols, HTTP and MCP record the same pseudonyms for the same rows; an
officer's look-up (page and API) finds the reads and is itself audited; the raw key reaches neither the audit
table, nor the journal, nor the evidence bundle, whose report counts the patients per person and verifies offline.
"""

from __future__ import annotations

import asyncio
import struct
import time
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, override_settings

from audit.accounting import list_disclosures
from audit.events import Context
from audit.models import AuditEvent, EventKind
from demo.clinic import PATIENT_KEYS, PHI_TAGS
from gateway.pgwire.backend import DataRow, FieldDescription
from gateway.wire.results import PatientReads
from identity.principal import Principal
from identity.roles import Role
from policy.classifier import classify
from policy.lineage import analyze_select
from policy.lineage_masking import plan_for_result
from policy.masking import MaskingPlan
from policy.parse_depth import parse_statements
from policy.patient_keys import (
    MAX_KEYS_PER_STATEMENT,
    KeysSeen,
    patient_access,
    pseudonym,
    require_patient_key,
    tables_read,
)
from policy.target_catalog import PatientKey, Tag, TargetCatalog, load_target_catalog
from tests import environment
from tests.factories import api_client, make_agent, make_user, user_client
from tests.pdf_text import body_lines, pdf_pages
from tests.services import wait_until
from tests.tampering import chain_until_linked
from tests.test_audit_evidence import export, offline_verify
from tests.test_mcp import http_session
from tests.wire_client import WireClient

READ = "SELECT id, mrn, full_name FROM patients ORDER BY id LIMIT 3"
UNIDENTIFIED = "SELECT full_name FROM patients ORDER BY id LIMIT 2"
_INT8 = struct.Struct("!q")


# --- which columns are keys ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog(target: Any) -> TargetCatalog:
    """The clinic's catalog with its PHI tags and patient keys, as the gateway loads it."""
    with psycopg.connect(target.owner_url, autocommit=True) as conn:
        return load_target_catalog(
            conn,
            [Tag("public", tag.table, tag.column, tag.phi_type) for tag in PHI_TAGS],
            [PatientKey("public", key.table, key.column, key.key_name) for key in PATIENT_KEYS],
        )


def _plan(sql: str, catalog: TargetCatalog, *, lineage: bool = True) -> tuple[MaskingPlan, tuple[str, ...]]:
    classification = classify(sql, catalog.functions, relations=catalog)
    analysed = analyze_select(parse_statements(sql)[0].stmt, catalog)
    with psycopg.connect(environment.db_url(environment.TARGET_DB), autocommit=True) as conn:
        result = conn.execute(sql).pgresult
        assert result is not None
        origins = [(result.ftable(i), result.ftablecol(i)) for i in range(result.nfields)]
    plan = plan_for_result(origins, classification, analysed if lineage else None, catalog, "agent")
    return plan, tables_read(classification, analysed if lineage else None, catalog)


@pytest.mark.parametrize(
    ("sql", "keys", "tables"),
    [
        ("SELECT id, full_name FROM patients", ((0, "patient_id"),), ("public.patients",)),
        ("SELECT s.m FROM (SELECT mrn AS m FROM patients) s", ((0, "mrn"),), ("public.patients",)),
        ("SELECT patient_id, notes FROM encounters", ((0, "patient_id"),), ("public.encounters",)),
        ("SELECT id FROM patients UNION ALL SELECT patient_id FROM encounters", ((0, "patient_id"),), None),
        # Not the stored key: computed, aggregated, beside a literal, or keys of two kinds in one column.
        ("SELECT id + 1 AS next_id FROM patients", (), ("public.patients",)),
        ("SELECT max(id) FROM patients", (), ("public.patients",)),
        ("SELECT id FROM patients UNION ALL SELECT 7", (), ("public.patients",)),
        ("SELECT id::text FROM patients UNION ALL SELECT mrn FROM patients", (), ("public.patients",)),
        # A count of rows reads nobody's record; a table without a key column is not a patient table.
        ("SELECT count(*) FROM patients", (), ()),
        ("SELECT drug FROM prescriptions", (), ()),
    ],
)
def test_key_columns_follow_lineage_and_never_guess(
    catalog: TargetCatalog, sql: str, keys: tuple[tuple[int, str], ...], tables: tuple[str, ...] | None
) -> None:
    plan, read = _plan(sql, catalog)
    assert plan.patient_keys == keys
    if tables is not None:
        assert read == tables


def test_without_lineage_the_origin_postgresql_reports_decides(catalog: TargetCatalog) -> None:
    """PostgreSQL reports an origin only for a plain column reference: the fallback cannot mistake ``id + 1``."""
    plan, _ = _plan("SELECT full_name, mrn, id + 1 AS x FROM patients", catalog, lineage=False)
    assert plan.patient_keys == ((1, "mrn"),)


# --- the wire reader ----------------------------------------------------------------------------------------------


def _field(name: str, type_oid: int, binary: bool = False) -> FieldDescription:
    return FieldDescription(name, 0, 0, type_oid, -1, -1, 1 if binary else 0)


def test_the_wire_reader_takes_the_key_column_in_text_and_binary_and_skips_null_and_malformed_rows() -> None:
    plan = MaskingPlan((None, None, None), patient_keys=((1, "patient_id"), (2, "mrn")))
    fields = (_field("full_name", 25), _field("id", 20, binary=True), _field("mrn", 25))
    reads = PatientReads.of(plan, fields)
    assert reads is not None and PatientReads.of(MaskingPlan((None,)), fields[:1]) is None
    rows = [
        DataRow((b"Ann", _INT8.pack(42), b"MRN00000042")).encode(),
        DataRow((None, _INT8.pack(42), b"MRN00000042")).encode(),  # the same patient again
        DataRow((b"Bo", None, b"MRN00000007")).encode(),  # NULL key: nobody
        DataRow((b"Cy", _INT8.pack(7), None)).encode(),
    ]
    malformed = b"D" + struct.pack("!ih", 10, 3) + struct.pack("!i", 999)  # a length past the end of the frame
    run = b"".join([*rows[:2], malformed, *rows[2:]])
    ends, position = [], 0
    for frame in [*rows[:2], malformed, *rows[2:]]:
        position += len(frame)
        ends.append(position)
    reads.add_run(run, ends)
    assert reads.seen.values == {"patient_id": {b"42", b"7"}, "mrn": {b"MRN00000042", b"MRN00000007"}}
    assert reads.key_columns == {"id": "patient_id", "mrn": "mrn"} and not reads.seen.truncated
    one_by_one = PatientReads.of(plan, fields)
    assert one_by_one is not None
    for frame in rows:
        one_by_one.add_frame(frame)
    assert one_by_one.seen.values == reads.seen.values


def test_the_list_is_bounded_and_says_so() -> None:
    plan = MaskingPlan((None,), patient_keys=((0, "patient_id"),))
    reads = PatientReads.of(plan, (_field("id", 20),))
    assert reads is not None
    frames = [DataRow((str(n).encode(),)).encode() for n in range(MAX_KEYS_PER_STATEMENT + 5)]
    ends = [sum(len(frame) for frame in frames[: n + 1]) for n in range(len(frames))]
    reads.add_run(b"".join(frames), ends)
    access = patient_access(
        datasource="clinic",
        tables=("public.patients",),
        key_columns=reads.key_columns,
        seen=reads.seen,
        rowcount=len(frames),
        key=b"k" * 32,
    )
    assert access is not None and access.truncated and len(access.pseudonyms) == MAX_KEYS_PER_STATEMENT
    assert access.details()["count"] == MAX_KEYS_PER_STATEMENT


def test_pseudonyms_are_keyed_per_data_source_and_kind_and_the_key_is_its_own() -> None:
    key = b"k" * 32
    seen = KeysSeen()
    seen.add("patient_id", b"42")
    access = patient_access(
        datasource="clinic", tables=(), key_columns={"id": "patient_id"}, seen=seen, rowcount=1, key=key
    )
    assert access is not None and access.pseudonyms == (pseudonym(key, "clinic", "patient_id", b"42"),)
    assert pseudonym(key, "clinic", "patient_id", b"42") != pseudonym(key, "other", "patient_id", b"42")
    assert pseudonym(key, "clinic", "patient_id", b"42") != pseudonym(key, "clinic", "mrn", b"42")
    assert access.pseudonyms[0].startswith("patient_id:") and len(access.pseudonyms[0]) == len("patient_id:") + 32
    with (
        override_settings(PATIENT_PSEUDONYM_KEY=settings.PSEUDONYM_KEY),
        pytest.raises(ImproperlyConfigured, match="differ"),
    ):
        require_patient_key()
    with override_settings(PATIENT_PSEUDONYM_KEY="short"), pytest.raises(ImproperlyConfigured, match="at least 32"):
        require_patient_key()


# --- end to end: every front records the same patients -----------------------------------------------------------


def _clinic_rows(sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(environment.db_url(environment.TARGET_DB)) as conn:
        return conn.execute(sql).fetchall()


def _expected_pseudonyms() -> list[str]:
    key = require_patient_key()
    rows = _clinic_rows(READ)
    return sorted(
        [pseudonym(key, "clinic", "patient_id", str(row[0]).encode()) for row in rows]
        + [pseudonym(key, "clinic", "mrn", str(row[1]).encode()) for row in rows]
    )


def _run(front: str, agent: Any, token: str, port: int, web_url: str, sql: str) -> None:
    if front == "http":
        response = api_client(token).post(
            "/api/v1/queries", {"datasource": "clinic", "sql": sql, "reason": "t"}, format="json"
        )
        assert response.status_code == 200, response.content
    elif front == "wire simple":
        with WireClient(port, agent.name, token) as client:
            client.query(sql)
    elif front == "wire extended, binary":
        dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{port}/clinic"
        with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor(binary=True) as cursor:
            assert len(cursor.execute(sql, prepare=True).fetchall()) > 0
    else:

        async def call() -> dict[str, Any]:
            async with http_session(web_url, token) as session:
                result = await session.call_tool("query", {"datasource": "clinic", "sql": sql, "reason": "t"})
                return dict(result.structured_content or {})

        assert asyncio.run(call()).get("status") == "executed"


def _executed_of(agent: Any) -> AuditEvent:
    """The agent's one executed record (the wire's is shipped from the journal within about half a second)."""
    return wait_until(
        lambda: AuditEvent.objects.filter(kind=EventKind.QUERY_EXECUTED, agent=agent).first(),
        15,
        what="the executed record",
    )


FRONTS = ["http", "wire simple", "wire extended, binary", "mcp"]


@pytest.mark.parametrize("front", FRONTS)
def test_every_front_records_the_patients_it_returned_and_the_look_up_finds_the_read(
    front: str, services: Any, web: Any
) -> None:
    owner = make_user(Role.ENGINEER, name="owner")
    agent, token = make_agent(owner)
    _run(front, agent, token, services.gateway_port, web.url, READ)
    executed = _executed_of(agent)
    patients = executed.details["patients"]
    assert patients["identified"] is True and patients["tables"] == ["public.patients"]
    assert patients["key_columns"] == {"id": "patient_id", "mrn": "mrn"}
    assert patients["pseudonyms"] == _expected_pseudonyms() and patients["count"] == 6
    assert patients["truncated"] is False
    first_mrn = _clinic_rows(READ)[0][1]
    assert first_mrn not in str(executed.details)
    officer = make_user(Role.COMPLIANCE, name="officer")
    found = list_disclosures(Principal(human=officer), Context(front="web"), "clinic", "mrn", f" {first_mrn} ")
    read = next(read for read in found.reads if read.event.pk == executed.pk)
    assert read.event.agent_name == agent.name and read.event.actor_name == owner.get_username()
    assert read.statement is not None and read.statement.statement == READ
    assert [name for name, _ in read.columns] == ["id", "mrn", "full_name"]
    assert dict(read.columns)["full_name"] != "-" and read.key_columns == {"id": "patient_id", "mrn": "mrn"}


def test_an_approved_statements_rows_are_accounted_to_its_requester_and_hidden_from_its_result(
    services: Any,
) -> None:
    """A held statement that returns patients' rows (RETURNING) is run by the real worker once approved: its
    outcome record (``ticket.executed``) names the patients, the look-up finds it with the ticket's statement,
    and the result the requester reads carries no pseudonym."""
    owner = make_user(Role.ENGINEER, name="owner")
    _, token = make_agent(owner)
    agent_api = api_client(token)
    sql = "UPDATE patients SET phone = phone WHERE id = 5 RETURNING id, mrn, ssn"
    response = agent_api.post(
        "/api/v1/queries", {"datasource": "clinic", "sql": sql, "reason": "check patient 5"}, format="json"
    )
    assert response.status_code == 202, response.content
    ticket_id = response.json()["ticket"]["id"]
    review = user_client(make_user(Role.REVIEWER)).post(
        f"/api/v1/tickets/{ticket_id}/reviews", {"decision": "approve", "comment": "ok"}, format="json"
    )
    assert review.status_code == 201, review.content
    executed = wait_until(
        lambda: AuditEvent.objects.filter(kind=EventKind.TICKET_EXECUTED, ticket_id=ticket_id).first(),
        30,
        what="the approved statement's outcome record",
    )
    ((mrn,),) = _clinic_rows("SELECT mrn FROM patients WHERE id = 5")
    key = require_patient_key()
    patients = executed.details["patients"]
    assert patients["identified"] is True and patients["key_columns"] == {"id": "patient_id", "mrn": "mrn"}
    assert patients["pseudonyms"] == sorted(
        [pseudonym(key, "clinic", "patient_id", b"5"), pseudonym(key, "clinic", "mrn", str(mrn).encode())]
    )
    assert executed.actor_name == owner.get_username()
    officer = make_user(Role.COMPLIANCE, name="officer")
    found = list_disclosures(Principal(human=officer), Context(front="web"), "clinic", "mrn", str(mrn))
    read = next(read for read in found.reads if read.event.pk == executed.pk)
    assert read.statement is not None and read.statement.kind == EventKind.TICKET_CREATED
    assert read.statement.statement == sql
    result = agent_api.get(f"/api/v1/tickets/{ticket_id}/result")
    assert result.status_code == 200, result.content
    assert "patients" not in result.json() and patients["pseudonyms"][0].split(":")[1] not in result.content.decode()


def test_a_read_that_fails_after_some_rows_accounts_for_the_rows_that_went_out(services: Any) -> None:
    """PostgreSQL sends rows as it makes them: a statement that fails on its fifth row has disclosed four
    patients. Its one outcome record (``query.failed``) names them, and the look-up finds it."""
    owner = make_user(Role.ENGINEER, name="owner")
    agent, token = make_agent(owner)
    sql = "SELECT id, mrn, 10 / (id - 5) AS ratio FROM patients WHERE id BETWEEN 1 AND 9 ORDER BY id"
    with WireClient(services.gateway_port, agent.name, token) as client:
        replies = client.query(sql)
    sent = [int(message.values[0]) for message in replies if isinstance(message, DataRow)]  # type: ignore[arg-type]
    assert sent == [1, 2, 3, 4], replies  # the rows before the error reached the client
    failed = wait_until(
        lambda: AuditEvent.objects.filter(kind=EventKind.QUERY_FAILED, agent=agent).first(), 15, what="the failure"
    )
    assert failed.details["sqlstate"] == "22012"
    key = require_patient_key()
    mrns = dict(_clinic_rows("SELECT id, mrn FROM patients WHERE id BETWEEN 1 AND 4"))
    expected = [pseudonym(key, "clinic", "patient_id", str(n).encode()) for n in sent]
    expected += [pseudonym(key, "clinic", "mrn", str(mrns[n]).encode()) for n in sent]
    assert failed.details["patients"]["pseudonyms"] == sorted(expected)
    officer = make_user(Role.COMPLIANCE, name="officer")
    found = list_disclosures(Principal(human=officer), Context(front="web"), "clinic", "patient_id", "3")
    assert any(read.event.pk == failed.pk for read in found.reads)
    assert not AuditEvent.objects.filter(kind=EventKind.QUERY_EXECUTED, agent=agent).exists()  # one outcome


def test_a_read_without_a_key_column_is_recorded_as_not_identified(services: Any) -> None:
    owner = make_user(Role.ENGINEER, name="owner")
    agent, token = make_agent(owner)
    client = api_client(token)
    for sql in (UNIDENTIFIED, "SELECT id + 0 AS shifted FROM patients ORDER BY 1 LIMIT 2", "SELECT 1 AS one"):
        response = client.post("/api/v1/queries", {"datasource": "clinic", "sql": sql, "reason": "t"}, format="json")
        assert response.status_code == 200, response.content
    executed = list(AuditEvent.objects.filter(kind=EventKind.QUERY_EXECUTED, agent=agent).order_by("id"))
    assert [event.details.get("patients") for event in executed] == [
        {"identified": False, "tables": ["public.patients"]},
        {"identified": False, "tables": ["public.patients"]},  # a computed key is no key: never a guess
        None,  # no patient table read
    ]
    with WireClient(services.gateway_port, agent.name, token) as wire:
        wire.query(UNIDENTIFIED)
    wire_record = wait_until(
        lambda: AuditEvent.objects.filter(kind=EventKind.QUERY_EXECUTED, agent=agent, front="wire").first(),
        15,
        what="the wire's executed record",
    )
    assert wire_record.details["patients"] == {"identified": False, "tables": ["public.patients"]}


# --- the officer's look-up, and what never holds the raw key -----------------------------------------------------


def test_officers_list_a_patients_reads_on_the_page_and_the_api_and_each_look_up_is_audited(services: Any) -> None:
    owner = make_user(Role.ENGINEER, name="owner")
    agent, token = make_agent(owner)
    _run("http", agent, token, services.gateway_port, "", READ)
    executed = _executed_of(agent)
    patient_id = str(_clinic_rows(READ)[1][0])
    officer = make_user(Role.COMPLIANCE, name="officer")
    page = Client()
    page.force_login(officer)
    assert page.get("/audit/disclosures/").status_code == 200
    response = page.post("/audit/disclosures/", {"kind": "clinic:patient_id", "key": patient_id})
    assert response.status_code == 200
    html = response.content.decode()
    assert f'data-event="{executed.pk}"' in html and f"/audit/events/{executed.pk}/" in html
    assert agent.name in html and owner.get_username() in html
    lookup = AuditEvent.objects.filter(kind=EventKind.AUDIT_DISCLOSURES_LISTED, actor=officer).get()
    assert lookup.details["pseudonym"] == pseudonym(require_patient_key(), "clinic", "patient_id", patient_id.encode())
    assert lookup.details["reads"] >= 1 and lookup.details["key_name"] == "patient_id"
    assert patient_id not in lookup.summary and f'"{patient_id}"' not in str(lookup.details)
    assert page.post("/audit/disclosures/", {"kind": "clinic:nope", "key": patient_id}).status_code == 400
    api = user_client(officer).post(
        "/api/v1/audit/disclosures",
        {"datasource": "clinic", "key_name": "patient_id", "key": patient_id},
        format="json",
    )
    assert api.status_code == 200, api.content
    assert executed.pk in [read["event"] for read in api.json()["reads"]]
    assert AuditEvent.objects.filter(kind=EventKind.AUDIT_DISCLOSURES_LISTED, actor=officer).count() == 2
    engineer = Client()
    engineer.force_login(owner)
    assert engineer.post("/audit/disclosures/", {"kind": "clinic:patient_id", "key": patient_id}).status_code == 403
    denied = user_client(owner).post(
        "/api/v1/audit/disclosures", {"datasource": "clinic", "key_name": "patient_id", "key": "1"}, format="json"
    )
    assert denied.status_code == 403


def test_the_raw_key_never_reaches_the_audit_table_the_journal_or_the_bundle(
    services: Any, tmp_path: Path, web: Any
) -> None:
    started = time.time()
    owner = make_user(Role.ENGINEER, name="keys")
    agent, token = make_agent(owner)
    for front in FRONTS:
        _run(front, agent, token, services.gateway_port, web.url, READ)
    mrns = [str(row[1]) for row in _clinic_rows(READ)]
    officer = make_user(Role.COMPLIANCE, name="officer")
    list_disclosures(Principal(human=officer), Context(front="web"), "clinic", "mrn", mrns[0])

    def every_front_recorded() -> list[AuditEvent]:
        found = list(AuditEvent.objects.filter(kind=EventKind.QUERY_EXECUTED, agent=agent))
        return found if len(found) == len(FRONTS) else []

    records = wait_until(every_front_recorded, 15, what="every front's executed record")
    assert all(record.details["patients"]["pseudonyms"] == _expected_pseudonyms() for record in records)
    with psycopg.connect(environment.db_url(environment.CONTROL_DB)) as conn:
        for mrn in mrns:
            # This test's events only: other files on this worker may have sent statements with the same MRN as
            # a literal (the noninterference harness draws literals from the data), whose text the audit keeps.
            hits = conn.execute(
                "SELECT count(*) FROM audit_auditevent WHERE occurred_at >= to_timestamp(%(since)s)"
                " AND (statement LIKE %(v)s OR summary LIKE %(v)s OR details::text LIKE %(v)s)",
                {"v": f"%{mrn}%", "since": started - 1},
            ).fetchone()
            assert hits == (0,), mrn
    journal = Path(services.log_dir) / "gateway-journal"
    for path in journal.rglob("*"):
        if path.is_file() and path.stat().st_mtime >= started - 1:
            content = path.read_bytes()
            assert not any(mrn.encode() in content for mrn in mrns), path
    chain_until_linked(records)
    bundle = export(tmp_path, "--user", owner.get_username())
    with zipfile.ZipFile(bundle) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    assert not any(mrn.encode() in content for content in files.values() for mrn in mrns)
    assert _expected_pseudonyms()[0].encode() in files["events.jsonl"]
    result = offline_verify(bundle)
    assert result.returncode == 0, result.stderr
    text = " ".join(body_lines(pdf_pages(files["report.pdf"], tmp_path)))
    assert f"{owner.get_username()} clinic 3 by mrn, 3 by patient_id {len(FRONTS)} 0" in text, text
