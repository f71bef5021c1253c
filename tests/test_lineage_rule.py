"""The read rule, pure (parser + catalog snapshot, no database): a PHI value may influence only its own output
column, through its mask (docs/invariants.md, 4). Each case is one of issue 12's decoders or one of the ordinary
reads that must keep running at once."""

from __future__ import annotations

import pytest

from policy.catalog_cache import inference_for, masks_for
from policy.function_catalog import SnapshotFunctionCatalog
from policy.lineage import analyze
from policy.lineage_masking import inference_verdict
from policy.lineage_names import SET_RETURNING_FUNCTIONS
from policy.target_catalog import Tag, TargetCatalog

COLUMNS = {
    ("public", "patients"): ("id", "mrn", "full_name", "date_of_birth", "ssn", "phone", "email", "address"),
    ("public", "encounters"): ("id", "patient_id", "admitted_at", "diagnosis_code", "notes"),
    ("public", "prescriptions"): ("id", "encounter_id", "drug", "dose"),
}
OIDS = {"public.patients": 1, "public.encounters": 2, "public.prescriptions": 3}
TAGS = {
    (1, 2): Tag("public", "patients", "mrn", "mrn"),
    (1, 3): Tag("public", "patients", "full_name", "name"),
    (1, 4): Tag("public", "patients", "date_of_birth", "birth_date"),
    (1, 5): Tag("public", "patients", "ssn", "ssn"),
    (2, 5): Tag("public", "encounters", "notes", "clinical_notes"),
}
BUILTINS = [
    *("ascii", "substr", "count", "nullif", "generate_series", "regexp_matches", "unnest", "string_to_array"),
    *("upper", "lower", "max", "min", "sum", "avg", "coalesce", "greatest", "length", "row_number", "lag"),
]


@pytest.fixture
def catalog(control_plane) -> TargetCatalog:  # type: ignore[no-untyped-def]
    functions = {("pg_catalog", name): "i" for name in BUILTINS}
    functions[("public", "my_function")] = "s"
    return TargetCatalog(
        relkinds={1: "r", 2: "r", 3: "r"},
        relation_oids=OIDS,
        tagged_columns=TAGS,
        tagged_relations=frozenset({1, 2}),
        functions=SnapshotFunctionCatalog(by_qualified_name=functions, search_path=("pg_catalog", "public")),
        masks=masks_for("no-such-datasource"),
        inference=inference_for("no-such-datasource"),
        relation_columns=COLUMNS,
    )


def verdict(sql: str, catalog: TargetCatalog, kind: str = "agent"):  # type: ignore[no-untyped-def]
    return inference_verdict(analyze(sql, catalog), catalog, kind)


HELD = {
    "count as a decoder": (
        "SELECT p.id, count(nullif(ascii(substr(p.ssn,1,1)) >= g, false)) FROM patients p "
        "CROSS JOIN generate_series(1,127) g WHERE p.id <= 3 GROUP BY p.id"
    ),
    "row count from a set-returning function's argument": (
        "SELECT p.id FROM patients p, generate_series(1, ascii(substr(p.ssn,5,1))) g WHERE p.id = 1"
    ),
    "count of regexp matches": "SELECT (SELECT count(*) FROM regexp_matches(p.ssn, '9', 'g')) FROM patients p",
    "count(phi)": "SELECT count(ssn) FROM patients",
    "count(DISTINCT phi)": "SELECT count(DISTINCT full_name) FROM patients",
    "max(phi)": "SELECT max(ssn) FROM patients",
    "DISTINCT": "SELECT DISTINCT full_name FROM patients",
    "UNION removes duplicates": "SELECT full_name FROM patients UNION SELECT 'x'",
    "INTERSECT": "SELECT ssn FROM patients INTERSECT SELECT '123-45-6789'",
    "computation in a subquery": "SELECT s.x FROM (SELECT 1 / (ascii(ssn) - 57) AS x FROM patients) s",
    "computation in a CTE": "WITH c AS (SELECT upper(full_name) AS u FROM patients) SELECT count(*) FROM c",
    "CASE condition with constant results": "SELECT CASE WHEN ssn LIKE '1%' THEN 1 ELSE 0 END FROM patients",
    "LIMIT from PHI": "SELECT id FROM patients LIMIT (SELECT ascii(ssn) FROM patients LIMIT 1)",
    "window ordered by PHI": "SELECT row_number() OVER (ORDER BY ssn) FROM patients",
    "user function in a filter": "SELECT id FROM patients WHERE my_function(id) > 0",
    "recursion bounded by PHI": (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r "
        "WHERE n < (SELECT ascii(ssn) FROM patients WHERE id = 1)) SELECT count(*) FROM r"
    ),
    "scalar subquery with an inner computation": (
        "SELECT (SELECT x.ssn FROM (SELECT ssn, 1 / (ascii(full_name) - 65) AS y FROM patients) x LIMIT 1)"
    ),
}


@pytest.mark.parametrize("sql", HELD.values(), ids=HELD.keys())
def test_inference_is_held_for_agents(catalog: TargetCatalog, sql: str) -> None:
    result = verdict(sql, catalog)
    assert result.action == "hold", result
    assert not result.withheld


WITHHELD = {
    "error oracle": ("SELECT 1 / (ascii(p.ssn) - 57) FROM patients p", [0]),
    "pseudonym oracle": ("SELECT id, CASE WHEN p.id < 0 THEN p.full_name ELSE 'Jane Roe' END FROM patients p", [1]),
    "nullif as an equality test": ("SELECT nullif(ssn, '123-45-6789') FROM patients", [0]),
    "computed name": ("SELECT id, upper(full_name), lower(full_name) AS l FROM patients", [1, 2]),
    "aggregate inside a computation": ("SELECT max(ssn) || '' FROM patients", [0]),
    "window value": ("SELECT lag(ssn) OVER (ORDER BY id) FROM patients", [0]),
    "user function on a key": ("SELECT my_function(id) FROM patients", [0]),
    "case on a subquery": (
        "SELECT (SELECT count(*) FROM patients p2 WHERE p2.ssn = p.ssn) || p.ssn FROM patients p",
        [0],
    ),
}


@pytest.mark.parametrize(("sql", "targets"), WITHHELD.values(), ids=WITHHELD.keys())
def test_computed_phi_is_withheld_not_run(catalog: TargetCatalog, sql: str, targets: list[int]) -> None:
    result = verdict(sql, catalog)
    assert result.action == "allow", result
    assert [column.target for column in result.withheld] == targets


ORDINARY = [
    "SELECT id, full_name, ssn, date_of_birth FROM patients WHERE id < 10 ORDER BY id",
    "SELECT p.full_name, e.admitted_at FROM patients p JOIN encounters e ON e.patient_id = p.id",
    "SELECT count(*) FROM patients",
    "SELECT diagnosis_code, count(*) FROM encounters GROUP BY diagnosis_code ORDER BY 2 DESC",
    "SELECT drug, avg(length(dose)) FROM prescriptions GROUP BY drug",
    "SELECT p.* FROM patients p WHERE p.id = 1",
    "SELECT ssn FROM patients UNION ALL SELECT ssn FROM patients",
    "SELECT id, (SELECT ssn FROM patients p2 WHERE p2.id = p.id) FROM patients p",
    "SELECT e.id, count(*) FROM encounters e JOIN prescriptions r ON r.encounter_id = e.id GROUP BY e.id",
]


@pytest.mark.parametrize("sql", ORDINARY)
def test_ordinary_reads_run_at_once(catalog: TargetCatalog, sql: str) -> None:
    result = verdict(sql, catalog)
    assert result.action == "allow", result
    assert not result.withheld


def test_engineers_keep_their_own_inference_rule(catalog: TargetCatalog) -> None:
    """The rule's actions come from the policy per kind: engineers are allowed inference by default."""
    assert verdict(HELD["count as a decoder"], catalog, "engineer").action == "allow"
    assert verdict(HELD["DISTINCT"], catalog, "engineer").action == "allow"


def test_set_returning_functions_match_the_server(target) -> None:  # type: ignore[no-untyped-def]
    """Every set-returning function the server ships is known as one (else its arguments would not count)."""
    import psycopg

    with psycopg.connect(target.owner_url) as conn:
        names = {
            name
            for (name,) in conn.execute(
                "SELECT DISTINCT proname FROM pg_proc WHERE proretset AND pronamespace = 'pg_catalog'::regnamespace"
            )
        }
    assert names <= SET_RETURNING_FUNCTIONS, sorted(names - SET_RETURNING_FUNCTIONS)


def test_set_returning_call_inside_an_expression_counts_rows(catalog: TargetCatalog) -> None:
    """``1 + generate_series(1, ascii(ssn))`` multiplies rows by the value, however deep the call sits."""
    lineage = analyze("SELECT 1 + generate_series(1, ascii(ssn)) FROM patients", catalog)
    assert any(source.column == "ssn" for source in lineage.outputs[0].inner_filters)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id FROM patients TABLESAMPLE SYSTEM (50) REPEATABLE (1)",
        "SELECT id FROM patients WHERE ctid > '(1,0)'",
    ],
)
def test_physical_layout_follows_the_widths_of_phi(catalog: TargetCatalog, sql: str) -> None:
    """Which rows share a page depends on how long their values are: sampling pages or reading ctid infers it."""
    assert verdict(sql, catalog).action == "hold"


def test_withholding_leaves_the_shared_parse_tree_alone(catalog: TargetCatalog) -> None:
    """Parse trees are memoised per text: a rewrite that changed one would change every later decision."""
    from policy.parse_depth import parse_statements
    from policy.withholding import withheld_statement

    sql = "SELECT id, upper(full_name) FROM patients"
    before = str(parse_statements(sql))
    first = withheld_statement(sql, [(1, "upper")])
    assert withheld_statement(sql, [(1, "upper")]) == first
    assert str(parse_statements(sql)) == before
    assert [column.target for column in verdict(sql, catalog).withheld] == [1]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # Found by the long noninterference run: a literal beside real values in one column shares their key.
        ("SELECT v.t FROM (VALUES ('MRN10459241')) v(t) UNION ALL SELECT mrn FROM patients", "redact"),
        ("SELECT mrn FROM patients UNION ALL SELECT $1", "redact"),
        ("SELECT full_name FROM patients UNION ALL SELECT upper('jane')", "redact"),
        ("SELECT mrn FROM patients UNION ALL SELECT NULL", "hash"),  # NULL is NULL under any key
        ("SELECT mrn FROM patients WHERE id = 1", "hash"),
    ],
)
def test_a_pseudonym_never_shares_a_column_with_a_written_value(
    catalog: TargetCatalog, sql: str, expected: str
) -> None:
    from policy.lineage_masking import mask_for_output

    [output] = analyze(sql, catalog).outputs
    spec = mask_for_output(output, catalog, "agent")
    assert spec is not None and spec.mask == expected
