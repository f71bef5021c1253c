"""discover_phi: finds the PHI columns of the demo clinic, with at most a few false positives, applying nothing."""

from __future__ import annotations

import io

import pytest
import yaml
from django.core.management import call_command

from demo.clinic import CLINIC_TABLES, PHI_TAGS
from policy.discovery import ColumnInfo, propose
from policy.models import ClassifiedRelation, DataSource, PhiColumn, PhiType


@pytest.mark.parametrize(
    ("column", "data_type", "samples", "expected"),
    [
        ("ref", "text", ["900-12-3456"] * 10, PhiType.SSN),  # values outrank an innocent name
        ("contact", "text", [f"person{i}@example.org" for i in range(10)], PhiType.EMAIL),
        ("contact", "text", ["(555) 010-1234", "555-010-9876"] * 5, PhiType.PHONE),
        ("external_id", "text", [f"MRN{i:08d}" for i in range(10)], PhiType.MRN),
        ("date_of_birth", "date", [], PhiType.BIRTH_DATE),
        ("patientName", "text", ["x"], PhiType.NAME),
        ("zip_code", "text", [], PhiType.ZIP),
        ("visit_notes", "text", ["free text"] * 10, PhiType.CLINICAL_NOTES),
        ("drug_name", "text", ["Metformin"] * 10, None),  # a name, but not a person's
        ("description", "text", ["Type 2 diabetes mellitus"] * 10, None),
        ("dose", "text", ["500 mg"] * 10, None),
        ("label", "text", ["900-12-3456", "row 2", "row 3", "row 4", "row 5", "row 6"], None),  # 1 in 6 is not "most"
    ],
)
def test_heuristics(column: str, data_type: str, samples: list[str], expected: PhiType | None) -> None:
    proposal = propose(ColumnInfo("public", "t", column, data_type), samples)
    assert (proposal.phi_type if proposal else None) == expected


def test_service_date_needs_a_person_link() -> None:
    assert propose(ColumnInfo("public", "visits", "admitted_at", "timestamp with time zone", True), []) is not None
    assert propose(ColumnInfo("public", "batches", "admitted_at", "timestamp with time zone", False), []) is None


def test_finds_the_demo_phi_columns_and_applies_nothing(target, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    datasource, _ = DataSource.objects.get_or_create(name="clinic_untagged")
    monkeypatch.setenv("DATASOURCE_CLINIC_UNTAGGED_READ_URL", target.read_url)  # play the gateway's environment
    out = io.StringIO()
    proposal_file = tmp_path / "proposed.yaml"
    call_command("discover_phi", "--datasource", "clinic_untagged", "--out", str(proposal_file), stdout=out)
    proposed = {(c["table"], c["column"], c["type"]) for c in yaml.safe_load(proposal_file.read_text())["columns"]}
    expected = {(f"public.{t.table}", t.column, t.phi_type) for t in PHI_TAGS}
    assert expected <= proposed, expected - proposed
    false_positives = {(table, column) for table, column, _ in proposed} - {(t, c) for t, c, _ in expected}
    assert len(false_positives) <= 3, false_positives
    assert not PhiColumn.objects.filter(datasource=datasource).exists()  # nothing applied
    # Importing the proposal would classify every scanned table (agents may read them); nothing is marked yet.
    classified = set(yaml.safe_load(proposal_file.read_text())["classified"])
    assert {f"public.{table}" for table in CLINIC_TABLES} <= classified
    assert not ClassifiedRelation.objects.filter(datasource=datasource).exists()
    report = out.getvalue()
    assert "+- table: public.patients" in report or "+  column: ssn" in report
    import psycopg

    with psycopg.connect(target.owner_url) as conn:  # no sampled value is ever printed
        ssn = conn.execute("SELECT ssn FROM patients ORDER BY id LIMIT 1").fetchone()[0]  # type: ignore[index]
    assert ssn not in report
