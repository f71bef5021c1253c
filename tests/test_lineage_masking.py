"""Masks and the inference guard from lineage, per kind of viewer (hand-built lineage; no parser involved)."""

from __future__ import annotations

import dataclasses

import pytest

from policy.catalog_cache import inference_for, masks_for
from policy.lineage_masking import inference_verdict, mask_for_output
from policy.lineage_types import Derivation, Lineage, OutputColumn, SourceColumn
from policy.target_catalog import Tag, TargetCatalog

SSN = SourceColumn("public", "patients", "ssn")
NAME = SourceColumn("public", "patients", "full_name")
DOB = SourceColumn("public", "patients", "date_of_birth")
NOTES = SourceColumn("public", "encounters", "notes")
CODE = SourceColumn("public", "diagnosis_codes", "code")
TAGS = {
    (1, 1): Tag("public", "patients", "ssn", "ssn"),
    (1, 2): Tag("public", "patients", "full_name", "name"),
    (1, 3): Tag("public", "patients", "date_of_birth", "birth_date"),
    (2, 1): Tag("public", "encounters", "notes", "clinical_notes"),
}


@pytest.fixture
def catalog(control_plane) -> TargetCatalog:  # type: ignore[no-untyped-def]
    from policy.function_catalog import SnapshotFunctionCatalog

    return TargetCatalog(
        relkinds={1: "r", 2: "r"},
        relation_oids={"public.patients": 1, "public.encounters": 2},
        tagged_columns=TAGS,
        tagged_relations=frozenset({1, 2}),
        functions=SnapshotFunctionCatalog(by_qualified_name={}, search_path=("pg_catalog",)),
        masks=masks_for("no-such-datasource"),  # the defaults
        inference=inference_for("no-such-datasource"),
    )


def out(*sources: SourceColumn, derivation: Derivation = Derivation.DIRECT, unknown: bool = False) -> OutputColumn:
    return OutputColumn("c", frozenset(sources), derivation, unknown)


@pytest.mark.parametrize(
    ("output", "kind", "expected"),
    [
        (out(SSN), "agent", "partial"),
        (out(DOB), "agent", "generalize"),
        (out(NAME), "agent", "hash"),
        (out(NAME), "reviewer", None),
        (out(SSN), "reviewer", "partial"),
        (out(CODE), "agent", None),
        (out(SSN, derivation=Derivation.TRANSFORMED), "agent", "redact"),  # reverse(ssn) must not show "last four"
        # upper(name) is never a pseudonym: a computed value hashed with the name key is a guess oracle
        (out(NAME, derivation=Derivation.TRANSFORMED), "agent", "redact"),
        (out(NAME, SSN, derivation=Derivation.TRANSFORMED), "agent", "redact"),
        (out(NAME, SSN), "agent", "redact"),  # UNION of two PHI columns with different masks
        (out(SSN, derivation=Derivation.AGGREGATE), "agent", "redact"),
        (out(SSN, derivation=Derivation.COUNT), "agent", None),
        (out(derivation=Derivation.COUNT), "agent", None),
        (out(CODE, unknown=True), "agent", "redact"),
        (out(NOTES, derivation=Derivation.TRANSFORMED), "reviewer", None),
    ],
)
def test_masks(catalog, output: OutputColumn, kind: str, expected: str | None) -> None:  # type: ignore[no-untyped-def]
    spec = mask_for_output(output, catalog, kind)
    assert (spec.mask if spec else None) == expected


def lineage(filters: frozenset[SourceColumn], reasons: tuple[str, ...] = ()) -> Lineage:
    return Lineage(outputs=(), filters=filters, relations=frozenset({("public", "patients")}), unknown_reasons=reasons)


def test_inference_guard(catalog) -> None:  # type: ignore[no-untyped-def]
    assert inference_verdict(lineage(frozenset({SSN})), catalog, "agent").action == "hold"
    assert "patients.ssn" in inference_verdict(lineage(frozenset({SSN})), catalog, "agent").reasons[0]
    assert inference_verdict(lineage(frozenset({SSN})), catalog, "engineer").action == "allow"
    assert inference_verdict(lineage(frozenset({CODE})), catalog, "agent").action == "allow"
    assert inference_verdict(lineage(frozenset(), ("unknown function in FROM",)), catalog, "agent").action == "hold"
    denying = dataclasses.replace(catalog, inference={**catalog.inference, ("ssn", "agent"): "deny"})
    assert inference_verdict(lineage(frozenset({SSN, DOB})), denying, "agent").action == "deny"
