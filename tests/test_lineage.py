"""Unit tests for policy.lineage over an in-memory clinic catalog (no database).

Every known masking bypass (aliases, concatenation, functions, subqueries,
CTEs, views, UNION, whole-row JSON, ...) gets a case asserting the exact
sources, derivation and filters; the fail-closed property (an output that
could carry a PHI column names it or is unknown) is exercised with hypothesis.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policy.lineage as lineage_module
from policy.lineage import (
    Derivation,
    DictCatalog,
    Lineage,
    OutputColumn,
    ParseError,
    SourceColumn,
    UnsupportedStatement,
    analyze,
)

DIRECT, TRANSFORMED, AGGREGATE, COUNT = (
    Derivation.DIRECT,
    Derivation.TRANSFORMED,
    Derivation.AGGREGATE,
    Derivation.COUNT,
)

PATIENT_COLUMNS = ("id", "mrn", "full_name", "date_of_birth", "ssn", "phone", "email", "address", "zip")
ENCOUNTER_COLUMNS = ("id", "patient_id", "admitted_at", "diagnosis_code", "notes")
PHI_COLUMNS = ("mrn", "full_name", "date_of_birth", "ssn", "phone", "email", "address", "zip")

CATALOG = DictCatalog(
    {
        ("public", "patients"): PATIENT_COLUMNS,
        ("public", "encounters"): ENCOUNTER_COLUMNS,
        ("public", "prescriptions"): ("id", "encounter_id", "drug", "dose"),
        ("public", "diagnosis_codes"): ("code", "description"),
        ("archive", "patients"): PATIENT_COLUMNS,
        ("public", "patient_contacts"): ("id", "name", "phone"),
        ("public", "contact_phones"): ("who", "phone"),
        ("public", "depression_patients"): ("patient_id",),
        ("public", "visit_counts"): ("patient_id", "visits"),
        ("public", "loop_a"): ("x",),
        ("public", "loop_b"): ("x",),
        ("public", "bad_width"): ("a", "b"),
        ("public", "no_definition"): ("x",),
    },
    kinds={("public", "visit_counts"): "m", ("public", "no_definition"): "v"},
    views={
        ("public", "patient_contacts"): "SELECT id, full_name AS name, phone FROM patients",
        # A view over the view, with its own column names, as pg_get_viewdef prints it.
        ("public", "contact_phones"): (
            " SELECT patient_contacts.name,\n    patient_contacts.phone\n   FROM patient_contacts;"
        ),
        ("public", "depression_patients"): "SELECT patient_id FROM encounters WHERE diagnosis_code LIKE 'F32%'",
        ("public", "visit_counts"): "SELECT patient_id, count(*) FROM encounters GROUP BY patient_id",
        ("public", "loop_a"): "SELECT x FROM loop_b",
        ("public", "loop_b"): "SELECT x FROM loop_a",
        ("public", "bad_width"): "SELECT ssn FROM patients",
    },
)


def src(column: str, table: str = "patients", schema: str = "public") -> SourceColumn:
    return SourceColumn(schema, table, column)


def pat(*columns: str, schema: str = "public") -> frozenset[SourceColumn]:
    """Columns of (public|archive).patients."""
    return frozenset(src(column, "patients", schema) for column in columns)


def enc(*columns: str) -> frozenset[SourceColumn]:
    return frozenset(src(column, "encounters") for column in columns)


ALL_PATIENT = pat(*PATIENT_COLUMNS)
NONE: frozenset[SourceColumn] = frozenset()


def run(sql: str) -> Lineage:
    return analyze(sql, CATALOG)


def filters_if_run(result: Lineage) -> frozenset[SourceColumn]:
    """Columns that leak by inference when every result column's expression runs (none is withheld)."""
    return result.filters.union(*(output.inner_filters for output in result.outputs))


def only(sql: str) -> OutputColumn:
    """The single output of a statement."""
    result = run(sql)
    assert len(result.outputs) == 1, result.outputs
    return result.outputs[0]


def check(
    output: OutputColumn, sources: frozenset[SourceColumn], derivation: Derivation, name: str | None = None
) -> None:
    """Exact lineage of one known output."""
    assert output.sources == sources
    assert output.derivation is derivation
    assert output.unknown is False
    if name is not None:
        assert output.name == name


# --------------------------------------------------------------------------
# Aliases and references
# --------------------------------------------------------------------------


def test_column_alias_keeps_the_source() -> None:
    result = run("SELECT ssn AS x FROM patients")
    check(result.outputs[0], pat("ssn"), DIRECT, "x")
    assert result.complete
    assert filters_if_run(result) == NONE
    assert result.relations == {("public", "patients")}


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT p.ssn FROM patients p",
        "SELECT p.ssn FROM patients AS p",
        "SELECT patients.ssn FROM patients",
        "SELECT public.patients.ssn FROM patients",
        "SELECT patients.ssn FROM public.patients",
        'SELECT "ssn" FROM "patients"',
        "SELECT SSN FROM PATIENTS",
        "SELECT (ssn) FROM patients",
    ],
)
def test_qualified_and_spelled_references(sql: str) -> None:
    check(only(sql), pat("ssn"), DIRECT, "ssn")


def test_table_alias_hides_the_table_name() -> None:
    # PostgreSQL rejects this; lineage must not guess and must not return nothing.
    output = only("SELECT patients.ssn FROM patients p")
    assert output.unknown
    assert "column patients.ssn cannot be resolved" in run("SELECT patients.ssn FROM patients p").unknown_reasons


def test_ambiguous_unqualified_reference_is_attributed_to_all_candidates() -> None:
    check(only("SELECT id FROM patients, encounters"), pat("id") | enc("id"), DIRECT, "id")


def test_table_column_aliases_rename_by_position() -> None:
    result = run("SELECT a, b, ssn FROM patients AS p(a, b)")
    check(result.outputs[0], pat("id"), DIRECT, "a")
    check(result.outputs[1], pat("mrn"), DIRECT, "b")
    check(result.outputs[2], pat("ssn"), DIRECT, "ssn")


def test_system_columns_carry_no_row_content_but_ctid_follows_widths() -> None:
    result = run("SELECT ctid, xmin FROM patients")
    assert [(o.name, o.unknown) for o in result.outputs] == [("ctid", False), ("xmin", False)]
    assert result.outputs[1].sources == NONE
    # A row's place on disk follows the widths of the rows stored before it.
    assert pat("ssn", "full_name") <= result.outputs[0].sources
    assert result.outputs[0].derivation is TRANSFORMED


def test_unresolvable_column_is_unknown() -> None:
    result = run("SELECT nope FROM patients")
    assert result.outputs[0].unknown
    assert result.outputs[0].derivation is TRANSFORMED
    assert result.unknown_reasons == ("column nope cannot be resolved",)
    assert not result.complete


def test_schema_resolution_uses_the_named_schema() -> None:
    check(only("SELECT ssn FROM archive.patients"), pat("ssn", schema="archive"), DIRECT)
    result = run("SELECT * FROM archive.patients")
    assert [o.sources for o in result.outputs] == [pat(c, schema="archive") for c in PATIENT_COLUMNS]
    assert result.relations == {("archive", "patients")}


def test_schema_qualified_reference_distinguishes_same_named_tables() -> None:
    result = run("SELECT archive.patients.ssn, public.patients.phone FROM archive.patients, public.patients")
    check(result.outputs[0], pat("ssn", schema="archive"), DIRECT)
    check(result.outputs[1], pat("phone"), DIRECT)


# --------------------------------------------------------------------------
# Computations: every bypass classic
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "columns", "name"),
    [
        ("phone || ''", ("phone",), "?column?"),
        ("concat(full_name, '')", ("full_name",), "concat"),
        ("upper(full_name)", ("full_name",), "upper"),
        ("ssn::text", ("ssn",), "ssn"),
        ("CAST(ssn AS varchar(20))", ("ssn",), "ssn"),
        ("'x'::text || ssn", ("ssn",), "?column?"),
        ("id + 0", ("id",), "?column?"),
        ("substr(ssn, 1, 3)", ("ssn",), "substr"),
        ("md5(ssn)", ("ssn",), "md5"),
        ("reverse(ssn)", ("ssn",), "reverse"),
        ("translate(ssn, '0123', 'abcd')", ("ssn",), "translate"),
        ("encode(convert_to(ssn, 'UTF8'), 'base64')", ("ssn",), "encode"),
        ("concat_ws('-', mrn, ssn)", ("mrn", "ssn"), "concat_ws"),
        ("format('%s/%s', phone, email)", ("phone", "email"), "format"),
        ("coalesce(ssn, NULL)", ("ssn",), "coalesce"),
        ("nullif(ssn, '')", ("ssn",), "nullif"),
        ("greatest(phone, email)", ("phone", "email"), "greatest"),
        ("least(phone, email)", ("phone", "email"), "least"),
        ("ssn = '123-45-6789'", ("ssn",), "?column?"),
        ("ssn IS NULL", ("ssn",), "?column?"),
        ("NOT (ssn LIKE '9%')", ("ssn",), "?column?"),
        ("ssn IN ('a', 'b')", ("ssn",), "?column?"),
        ("ssn BETWEEN 'a' AND 'b'", ("ssn",), "?column?"),
        ("(ssn = 'a') IS TRUE", ("ssn",), "?column?"),
        ("ssn IS DISTINCT FROM mrn", ("ssn", "mrn"), "?column?"),
        ("(ARRAY[ssn, phone])[1]", ("ssn", "phone"), "array"),
        ("(string_to_array(ssn, '-'))[1:2]", ("ssn",), "string_to_array"),
        ("ROW(ssn, 1)", ("ssn",), "row"),
        ("json_build_object('s', ssn)", ("ssn",), "json_build_object"),
        ("jsonb_build_array(phone, 1)", ("phone",), "jsonb_build_array"),
        ("JSON_OBJECT('s': ssn)", ("ssn",), "json_object"),
        ("JSON_ARRAY(phone)", ("phone",), "json_array"),
        ("xmlelement(name x, ssn)", ("ssn",), "xmlelement"),
        ("xmlforest(email)", ("email",), "xmlforest"),
        ("to_char(date_of_birth, 'YYYY')", ("date_of_birth",), "to_char"),
        ("extract(year FROM date_of_birth)", ("date_of_birth",), "extract"),
        ("date_of_birth + interval '1 day'", ("date_of_birth",), "?column?"),
        ("my_schema.obfuscate(ssn)", ("ssn",), "obfuscate"),
        ("CASE WHEN id > 0 THEN ssn ELSE phone END", ("ssn", "phone"), "phone"),
        ("CASE id WHEN 1 THEN full_name END", ("full_name",), "case"),
        ("CASE WHEN id > 0 THEN 'x' ELSE email END", ("email",), "email"),
        ("lower(upper(lower(upper(ssn))))", ("ssn",), "lower"),
    ],
)
def test_computed_outputs_keep_every_source(expression: str, columns: tuple[str, ...], name: str) -> None:
    check(only(f"SELECT {expression} FROM patients"), pat(*columns), TRANSFORMED, name)


def test_collation_does_not_change_the_value() -> None:
    check(only('SELECT ssn COLLATE "C" FROM patients'), pat("ssn"), DIRECT, "ssn")


def test_constants_and_parameterless_functions_have_no_sources() -> None:
    result = run("SELECT 1, 'x', now(), current_user, $1, 1::int FROM patients")
    assert [o.sources for o in result.outputs] == [NONE] * 6
    assert [o.name for o in result.outputs] == ["?column?", "?column?", "now", "current_user", "?column?", "int4"]
    assert result.complete


def test_case_conditions_go_to_filters() -> None:
    result = run("SELECT CASE WHEN ssn LIKE '9%' THEN 'yes' ELSE 'no' END AS flag FROM patients")
    check(result.outputs[0], NONE, TRANSFORMED, "flag")
    assert filters_if_run(result) == pat("ssn")
    result = run("SELECT CASE zip WHEN '10001' THEN full_name END FROM patients")
    check(result.outputs[0], pat("full_name"), TRANSFORMED)
    assert filters_if_run(result) == pat("zip")


def test_long_operator_chains_are_walked_without_recursion() -> None:
    expression = " || ".join(["phone"] * 800)
    check(only(f"SELECT {expression} FROM patients"), pat("phone"), TRANSFORMED)


# --------------------------------------------------------------------------
# Star expansion and joins
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sql", ["SELECT * FROM patients", "SELECT t.* FROM patients t", "TABLE patients"])
def test_star_expands_in_catalog_order(sql: str) -> None:
    result = run(sql)
    assert [o.name for o in result.outputs] == list(PATIENT_COLUMNS)
    assert [o.sources for o in result.outputs] == [pat(c) for c in PATIENT_COLUMNS]
    assert all(o.derivation is DIRECT and not o.unknown for o in result.outputs)


def test_star_over_a_join_lists_tables_in_from_order() -> None:
    result = run("SELECT * FROM patients p JOIN encounters e ON e.patient_id = p.id")
    assert [o.name for o in result.outputs] == [*PATIENT_COLUMNS, *ENCOUNTER_COLUMNS]
    assert [o.sources for o in result.outputs] == [pat(c) for c in PATIENT_COLUMNS] + [
        enc(c) for c in ENCOUNTER_COLUMNS
    ]
    assert filters_if_run(result) == pat("id") | enc("patient_id")
    assert result.relations == {("public", "patients"), ("public", "encounters")}


def test_qualified_star_picks_one_relation() -> None:
    result = run("SELECT e.*, p.ssn FROM patients p, encounters e")
    assert [o.sources for o in result.outputs] == [*(enc(c) for c in ENCOUNTER_COLUMNS), pat("ssn")]


def test_using_join_merges_the_join_column() -> None:
    result = run("SELECT * FROM patients JOIN archive.patients a USING (id)")
    assert len(result.outputs) == 17
    check(result.outputs[0], pat("id") | pat("id", schema="archive"), DIRECT, "id")
    check(result.outputs[1], pat("mrn"), DIRECT, "mrn")
    check(result.outputs[9], pat("mrn", schema="archive"), DIRECT, "mrn")
    assert filters_if_run(result) == pat("id") | pat("id", schema="archive")


def test_natural_join_merges_every_common_column() -> None:
    result = run("SELECT * FROM patients NATURAL JOIN archive.patients")
    assert [o.name for o in result.outputs] == list(PATIENT_COLUMNS)
    assert [o.sources for o in result.outputs] == [pat(c) | pat(c, schema="archive") for c in PATIENT_COLUMNS]
    assert filters_if_run(result) == ALL_PATIENT | pat(*PATIENT_COLUMNS, schema="archive")


def test_using_join_alias_names_the_merged_columns() -> None:
    check(
        only("SELECT u.id FROM patients JOIN archive.patients a USING (id) AS u"),
        pat("id") | pat("id", schema="archive"),
        DIRECT,
    )


def test_join_alias_hides_the_tables_inside() -> None:
    result = run("SELECT j.* FROM (patients p JOIN encounters e ON p.id = e.patient_id) AS j")
    assert [o.sources for o in result.outputs] == [pat(c) for c in PATIENT_COLUMNS] + [
        enc(c) for c in ENCOUNTER_COLUMNS
    ]
    assert only("SELECT p.ssn FROM (patients p JOIN encounters e ON true) AS j").unknown


def test_left_join_on_condition_goes_to_filters() -> None:
    result = run(
        "SELECT p.id FROM patients p LEFT JOIN encounters e ON e.patient_id = p.id AND e.diagnosis_code = 'F32'"
    )
    check(result.outputs[0], pat("id"), DIRECT)
    assert filters_if_run(result) == pat("id") | enc("patient_id", "diagnosis_code")


# --------------------------------------------------------------------------
# Whole-row references
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "name"),
    [
        ("p", "p"),
        ("row_to_json(p)", "row_to_json"),
        ("row_to_json(p.*)", "row_to_json"),
        ("to_jsonb(p)", "to_jsonb"),
        ("hstore(p)", "hstore"),
        ("ROW(p.*)", "row"),
        ("p::text", "p"),
        ("jsonb_pretty(to_jsonb(p))", "jsonb_pretty"),
    ],
)
def test_whole_row_references_carry_every_column(expression: str, name: str) -> None:
    check(only(f"SELECT {expression} FROM patients p"), ALL_PATIENT, TRANSFORMED, name)


def test_field_of_a_whole_row_is_that_column() -> None:
    check(only("SELECT (p).ssn FROM patients p"), pat("ssn"), DIRECT, "ssn")
    result = run("SELECT (p).* FROM patients p")
    assert [o.sources for o in result.outputs] == [pat(c) for c in PATIENT_COLUMNS]


def test_field_of_a_computed_row_keeps_all_its_sources() -> None:
    check(only("SELECT (ROW(ssn, phone)).f1 FROM patients"), pat("ssn", "phone"), TRANSFORMED, "f1")


# --------------------------------------------------------------------------
# Aggregates and window functions
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "columns", "derivation", "name"),
    [
        ("count(*)", (), COUNT, "count"),
        ("count(ssn)", ("ssn",), COUNT, "count"),
        ("count(DISTINCT ssn)", ("ssn",), COUNT, "count"),
        ("count(p.*)", PATIENT_COLUMNS, COUNT, "count"),
        ("max(ssn)", ("ssn",), AGGREGATE, "max"),
        ("min(date_of_birth)", ("date_of_birth",), AGGREGATE, "min"),
        ("string_agg(full_name, ',')", ("full_name",), AGGREGATE, "string_agg"),
        ("array_agg(phone)", ("phone",), AGGREGATE, "array_agg"),
        ("json_agg(email)", ("email",), AGGREGATE, "json_agg"),
        ("jsonb_agg(email)", ("email",), AGGREGATE, "jsonb_agg"),
        ("json_object_agg(mrn, ssn)", ("mrn", "ssn"), AGGREGATE, "json_object_agg"),
        ("avg(id)", ("id",), AGGREGATE, "avg"),
        ("sum(id)", ("id",), AGGREGATE, "sum"),
        ("mode() WITHIN GROUP (ORDER BY zip)", ("zip",), AGGREGATE, "mode"),
        ("percentile_disc(0.5) WITHIN GROUP (ORDER BY date_of_birth)", ("date_of_birth",), AGGREGATE, None),
        ("JSON_ARRAYAGG(ssn)", ("ssn",), AGGREGATE, "json_arrayagg"),
        ("JSON_OBJECTAGG(mrn : phone)", ("mrn", "phone"), AGGREGATE, "json_objectagg"),
        # Aggregating a computed value, whole rows or an unknown aggregate can return anything.
        ("json_agg(p.*)", PATIENT_COLUMNS, TRANSFORMED, "json_agg"),
        ("max(ssn || '')", ("ssn",), TRANSFORMED, "max"),
        ("my_agg(DISTINCT ssn)", ("ssn",), TRANSFORMED, "my_agg"),
        ("max(ssn) || ''", ("ssn",), TRANSFORMED, "?column?"),
    ],
)
def test_aggregates(expression: str, columns: tuple[str, ...], derivation: Derivation, name: str | None) -> None:
    check(only(f"SELECT {expression} FROM patients p"), pat(*columns), derivation, name)


def test_count_star_group_by_zip() -> None:
    result = run("SELECT count(*) FROM patients GROUP BY zip")
    check(result.outputs[0], NONE, COUNT, "count")
    assert filters_if_run(result) == pat("zip")
    assert result.complete


def test_aggregate_filter_and_ordering_go_to_filters() -> None:
    result = run("SELECT count(*) FILTER (WHERE ssn LIKE '9%'), string_agg(mrn, ',' ORDER BY phone) FROM patients")
    check(result.outputs[0], NONE, COUNT)
    check(result.outputs[1], pat("mrn"), AGGREGATE)
    assert filters_if_run(result) == pat("ssn", "phone")


@pytest.mark.parametrize(
    ("expression", "columns", "derivation", "filters"),
    [
        ("lag(ssn) OVER (PARTITION BY zip ORDER BY date_of_birth)", ("ssn",), TRANSFORMED, ("zip", "date_of_birth")),
        ("first_value(ssn) OVER (ORDER BY id)", ("ssn",), TRANSFORMED, ("id",)),
        ("row_number() OVER (PARTITION BY zip)", (), TRANSFORMED, ("zip",)),
        ("count(*) OVER (PARTITION BY ssn)", (), COUNT, ("ssn",)),
        ("max(phone) OVER ()", ("phone",), AGGREGATE, ()),
        ("rank() OVER w", (), TRANSFORMED, ("email",)),
    ],
)
def test_window_functions(
    expression: str, columns: tuple[str, ...], derivation: Derivation, filters: tuple[str, ...]
) -> None:
    result = run(f"SELECT {expression} FROM patients WINDOW w AS (ORDER BY email)")
    check(result.outputs[0], pat(*columns), derivation)
    # The named window's ORDER BY is always inspected, used or not.
    assert filters_if_run(result) == pat(*filters, "email")


def test_grouping_reveals_no_values() -> None:
    result = run("SELECT zip, GROUPING(zip), count(*) FROM patients GROUP BY ROLLUP (zip, (mrn, email))")
    check(result.outputs[1], NONE, TRANSFORMED, "grouping")
    assert filters_if_run(result) == pat("zip", "mrn", "email")


# --------------------------------------------------------------------------
# Subqueries in expressions
# --------------------------------------------------------------------------


def test_correlated_scalar_subquery_passes_its_value_through() -> None:
    result = run("SELECT (SELECT ssn FROM patients p2 WHERE p2.id = p.id) FROM patients p")
    check(result.outputs[0], pat("ssn"), DIRECT, "ssn")
    assert filters_if_run(result) == pat("id")


def test_uncorrelated_scalar_subquery() -> None:
    check(only("SELECT (SELECT ssn FROM patients LIMIT 1)"), pat("ssn"), DIRECT, "ssn")
    check(only("SELECT (SELECT upper(ssn) AS s FROM patients LIMIT 1) AS y"), pat("ssn"), TRANSFORMED, "y")


def test_exists_in_where_puts_its_columns_in_filters() -> None:
    result = run(
        "SELECT id FROM patients p WHERE EXISTS "
        "(SELECT 1 FROM encounters e WHERE e.patient_id = p.id AND e.diagnosis_code = 'F32')"
    )
    check(result.outputs[0], pat("id"), DIRECT)
    assert filters_if_run(result) == pat("id") | enc("patient_id", "diagnosis_code")


def test_in_subquery_compares_its_outputs() -> None:
    result = run("SELECT id FROM patients WHERE id IN (SELECT patient_id FROM encounters WHERE notes LIKE '%hiv%')")
    check(result.outputs[0], pat("id"), DIRECT)
    assert filters_if_run(result) == pat("id") | enc("patient_id", "notes")


def test_subqueries_in_the_target_list() -> None:
    result = run(
        "SELECT EXISTS (SELECT 1 FROM encounters WHERE notes = 'x'), ARRAY(SELECT phone FROM patients), "
        "ssn IN (SELECT ssn FROM archive.patients) FROM patients"
    )
    check(result.outputs[0], NONE, TRANSFORMED, "exists")
    check(result.outputs[1], pat("phone"), TRANSFORMED, "array")
    check(result.outputs[2], pat("ssn") | pat("ssn", schema="archive"), TRANSFORMED, "?column?")
    assert filters_if_run(result) == enc("notes")


def test_multi_column_scalar_subquery_is_unknown() -> None:
    output = only("SELECT (SELECT ssn, phone FROM patients LIMIT 1)")
    assert output.unknown
    assert output.sources == pat("ssn", "phone")


# --------------------------------------------------------------------------
# FROM subqueries, LATERAL, CTEs
# --------------------------------------------------------------------------


def test_subquery_in_from() -> None:
    check(only("SELECT * FROM (SELECT ssn FROM patients) s"), pat("ssn"), DIRECT, "ssn")
    check(only("SELECT s.x FROM (SELECT ssn AS x FROM patients) s"), pat("ssn"), DIRECT, "x")


def test_subquery_column_aliases() -> None:
    result = run("SELECT * FROM (SELECT ssn, phone FROM patients) AS s(a)")
    assert [(o.name, o.sources) for o in result.outputs] == [("a", pat("ssn")), ("phone", pat("phone"))]


def test_subquery_filters_propagate() -> None:
    result = run("SELECT s.id FROM (SELECT id FROM patients WHERE ssn LIKE '9%' ORDER BY phone) s")
    check(result.outputs[0], pat("id"), DIRECT)
    assert filters_if_run(result) == pat("ssn", "phone")


def test_lateral_subquery_sees_earlier_from_items() -> None:
    check(only("SELECT x.s FROM patients p, LATERAL (SELECT p.ssn AS s) x"), pat("ssn"), DIRECT, "s")
    result = run(
        "SELECT p.id, last.notes FROM patients p CROSS JOIN LATERAL "
        "(SELECT notes FROM encounters e WHERE e.patient_id = p.id ORDER BY admitted_at DESC LIMIT 1) last"
    )
    check(result.outputs[1], enc("notes"), DIRECT, "notes")
    assert filters_if_run(result) == pat("id") | enc("patient_id", "admitted_at")


def test_lateral_function_and_values() -> None:
    check(only("SELECT u FROM patients p, unnest(ARRAY[p.ssn, p.phone]) u"), pat("ssn", "phone"), TRANSFORMED, "u")
    check(only("SELECT v.x FROM patients p, LATERAL (VALUES (p.ssn)) v(x)"), pat("ssn"), DIRECT, "x")


def test_non_lateral_subquery_does_not_see_siblings() -> None:
    # Without LATERAL, "ssn" inside the subquery cannot be the sibling's column.
    output = only("SELECT s.v FROM patients p, (SELECT ssn AS v) s")
    assert output.unknown


def test_cte_star() -> None:
    check(only("WITH c AS (SELECT ssn FROM patients) SELECT * FROM c"), pat("ssn"), DIRECT, "ssn")


def test_cte_column_aliases_and_chains() -> None:
    check(only("WITH c(x) AS (SELECT ssn FROM patients) SELECT x FROM c"), pat("ssn"), DIRECT, "x")
    check(
        only("WITH a AS (SELECT ssn FROM patients), b AS (SELECT ssn AS s FROM a) SELECT upper(s) FROM b"),
        pat("ssn"),
        TRANSFORMED,
    )


def test_cte_shadows_a_table_name() -> None:
    result = run("WITH patients AS (SELECT 1 AS ssn) SELECT ssn FROM patients")
    check(result.outputs[0], NONE, DIRECT, "ssn")
    assert result.relations == frozenset()
    assert result.complete


def test_cte_reading_the_table_it_shadows() -> None:
    check(only("WITH patients AS (SELECT ssn FROM patients) SELECT ssn FROM patients"), pat("ssn"), DIRECT)


def test_cte_does_not_shadow_tables_inside_views() -> None:
    result = run("WITH patients AS (SELECT 1 AS id, 'x' AS full_name, 'y' AS phone) SELECT * FROM patient_contacts")
    assert [o.sources for o in result.outputs] == [pat("id"), pat("full_name"), pat("phone")]


def test_cte_visible_inside_subqueries() -> None:
    check(only("WITH c AS (SELECT phone FROM patients) SELECT (SELECT phone FROM c LIMIT 1)"), pat("phone"), DIRECT)


def test_recursive_cte_over_encounters() -> None:
    result = run(
        "WITH RECURSIVE chain(n, pid) AS ("
        "  SELECT id, patient_id FROM encounters WHERE diagnosis_code = 'F32'"
        "  UNION ALL"
        "  SELECT chain.n + 1, e.patient_id FROM chain JOIN encounters e ON e.id = chain.pid WHERE chain.n < 5"
        ") SELECT * FROM chain"
    )
    check(result.outputs[0], enc("id"), TRANSFORMED, "n")
    check(result.outputs[1], enc("patient_id"), DIRECT, "pid")
    assert filters_if_run(result) == enc("diagnosis_code", "id", "patient_id")
    assert result.complete


def test_recursive_term_adds_sources() -> None:
    output = only(
        "WITH RECURSIVE r(x) AS (SELECT id::text FROM encounters "
        "UNION ALL SELECT p.ssn FROM r JOIN patients p ON p.id::text = r.x) SELECT x FROM r"
    )
    check(output, enc("id") | pat("ssn"), TRANSFORMED)


def test_recursive_cte_reaches_a_fixed_point_over_several_rounds() -> None:
    output = only(
        "WITH RECURSIVE r(a, b, c) AS (SELECT ssn, mrn, zip FROM patients UNION ALL SELECT b, c, a FROM r) "
        "SELECT b FROM r"
    )
    check(output, pat("ssn", "mrn", "zip"), DIRECT)


def test_recursive_with_may_refer_forward() -> None:
    check(
        only("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT ssn FROM patients) SELECT * FROM a"),
        pat("ssn"),
        DIRECT,
    )


def test_recursive_cte_cycle_columns() -> None:
    result = run(
        "WITH RECURSIVE t(id, pid) AS (SELECT id, patient_id FROM encounters UNION ALL SELECT t.id, t.pid FROM t) "
        "CYCLE id SET is_cycle USING path SELECT * FROM t"
    )
    assert [o.name for o in result.outputs] == ["id", "pid", "is_cycle", "path"]
    check(result.outputs[3], enc("id"), TRANSFORMED)


# --------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------


def test_view_columns_resolve_to_base_columns() -> None:
    result = run("SELECT * FROM patient_contacts")
    assert [(o.name, o.sources, o.derivation) for o in result.outputs] == [
        ("id", pat("id"), DIRECT),
        ("name", pat("full_name"), DIRECT),
        ("phone", pat("phone"), DIRECT),
    ]
    assert result.relations == {("public", "patients")}
    assert result.complete


def test_view_over_view_uses_its_own_column_names() -> None:
    result = run("SELECT c.who, upper(c.phone) FROM contact_phones c")
    check(result.outputs[0], pat("full_name"), DIRECT, "who")
    check(result.outputs[1], pat("phone"), TRANSFORMED, "upper")
    assert result.relations == {("public", "patients")}


def test_view_filters_are_reported() -> None:
    result = run("SELECT * FROM depression_patients")
    check(result.outputs[0], enc("patient_id"), DIRECT)
    assert filters_if_run(result) == enc("diagnosis_code")


def test_materialized_view() -> None:
    result = run("SELECT * FROM visit_counts WHERE visits > 3")
    check(result.outputs[0], enc("patient_id"), DIRECT, "patient_id")
    check(result.outputs[1], NONE, COUNT, "visits")
    assert filters_if_run(result) == enc("patient_id")


def test_query_filters_on_view_columns_map_to_base_columns() -> None:
    result = run("SELECT name FROM patient_contacts WHERE phone LIKE '555%'")
    check(result.outputs[0], pat("full_name"), DIRECT)
    assert filters_if_run(result) == pat("phone")


@pytest.mark.parametrize(
    ("view", "reason"),
    [
        ("loop_a", "refers to itself"),
        ("no_definition", "definition of view public.no_definition is not in the catalog"),
        ("bad_width", "view public.bad_width has 2 columns but its definition returns 1"),
    ],
)
def test_views_that_cannot_be_traced_are_unknown(view: str, reason: str) -> None:
    result = run(f"SELECT * FROM {view}")
    assert result.outputs and all(o.unknown for o in result.outputs)
    assert any(reason in r for r in result.unknown_reasons)


def test_view_with_wrong_width_still_reports_known_sources() -> None:
    result = run("SELECT a FROM bad_width")
    assert result.outputs[0].unknown
    assert result.outputs[0].sources == pat("ssn")


# --------------------------------------------------------------------------
# Set operations, VALUES, TABLE
# --------------------------------------------------------------------------


def test_union_output_takes_sources_of_every_arm() -> None:
    # diagnosis_codes has no "id": PostgreSQL would reject it, lineage still reports ssn.
    output = only("SELECT id FROM diagnosis_codes UNION SELECT ssn FROM patients")
    assert src("ssn") in output.sources
    assert output.unknown
    check(
        only("SELECT code FROM diagnosis_codes UNION SELECT ssn FROM patients"),
        frozenset({src("code", "diagnosis_codes"), src("ssn")}),
        DIRECT,
        "code",
    )


@pytest.mark.parametrize("operator", ["UNION", "UNION ALL", "INTERSECT", "EXCEPT", "EXCEPT ALL"])
def test_set_operations(operator: str) -> None:
    result = run(f"SELECT id, phone FROM patients {operator} SELECT patient_id, upper(notes) FROM encounters")
    check(result.outputs[0], pat("id") | enc("patient_id"), DIRECT, "id")
    check(result.outputs[1], pat("phone") | enc("notes"), TRANSFORMED, "phone")


def test_union_with_null_arm_stays_direct() -> None:
    check(only("SELECT ssn FROM patients UNION ALL SELECT NULL"), pat("ssn"), DIRECT)


def test_union_mixing_direct_and_aggregate_is_transformed() -> None:
    check(only("SELECT ssn FROM patients UNION SELECT max(ssn) FROM patients"), pat("ssn"), TRANSFORMED)


def test_union_order_by_output_name_goes_to_filters() -> None:
    result = run("SELECT id, zip FROM patients UNION SELECT id, zip FROM archive.patients ORDER BY zip LIMIT 5")
    # UNION compares whole rows (every column), ORDER BY zip sorts by either arm's zip.
    assert filters_if_run(result) == pat("id", "zip") | pat("id", "zip", schema="archive")


def test_union_arms_of_different_widths_are_unknown() -> None:
    result = run("SELECT id, ssn FROM patients UNION SELECT id FROM patients")
    assert all(o.unknown for o in result.outputs)
    assert "set operation arms return different numbers of columns" in result.unknown_reasons


def test_long_union_chain() -> None:
    arms = [f"SELECT {column} FROM patients" for column in PHI_COLUMNS] * 60
    check(only(" UNION ALL ".join(arms)), pat(*PHI_COLUMNS), DIRECT, "mrn")


def test_parenthesized_set_operation_with_its_own_limit() -> None:
    sql = "(SELECT ssn FROM patients ORDER BY date_of_birth LIMIT 1) UNION (SELECT phone FROM patients)"
    result = run(sql)
    check(result.outputs[0], pat("ssn", "phone"), DIRECT)
    # UNION (not ALL) removes duplicates, so both arms' values decide the row count.
    assert filters_if_run(result) == pat("date_of_birth", "ssn", "phone")


def test_values_lists() -> None:
    result = run("VALUES (1, 'a'), (2, 'b')")
    assert [(o.name, o.sources, o.unknown) for o in result.outputs] == [
        ("column1", NONE, False),
        ("column2", NONE, False),
    ]
    check(only("SELECT x FROM (VALUES (1), (2)) v(x)"), NONE, DIRECT, "x")


def test_table_statement_with_schema() -> None:
    result = run("TABLE archive.patients")
    assert [o.sources for o in result.outputs] == [pat(c, schema="archive") for c in PATIENT_COLUMNS]


# --------------------------------------------------------------------------
# Functions in FROM
# --------------------------------------------------------------------------


def test_generate_series_has_no_sources_and_is_known() -> None:
    result = run("SELECT * FROM generate_series(1, 3)")
    check(result.outputs[0], NONE, TRANSFORMED, "generate_series")
    assert result.complete
    assert [o.name for o in run("SELECT * FROM generate_series(1, 3) g").outputs] == ["g"]


def test_unnest_with_ordinality_and_column_aliases() -> None:
    result = run("SELECT * FROM unnest(ARRAY[1, 2]) WITH ORDINALITY AS u(v, n)")
    assert [(o.name, o.sources, o.unknown) for o in result.outputs] == [("v", NONE, False), ("n", NONE, False)]


def test_record_function_with_column_definition_list() -> None:
    result = run("SELECT r.ssn FROM patients p, json_to_record(row_to_json(p)) AS r(ssn text)")
    check(result.outputs[0], ALL_PATIENT, TRANSFORMED, "ssn")
    assert result.complete


def test_builtin_record_functions_have_known_columns() -> None:
    result = run("SELECT key, value FROM patients p, json_each(row_to_json(p))")
    assert [(o.name, o.sources, o.derivation) for o in result.outputs] == [
        ("key", ALL_PATIENT, TRANSFORMED),
        ("value", ALL_PATIENT, TRANSFORMED),
    ]


def test_rows_from_concatenates_function_columns() -> None:
    result = run("SELECT * FROM ROWS FROM (generate_series(1, 2), json_to_record('{}') AS (a int)) AS r")
    assert [o.name for o in result.outputs] == ["generate_series", "a"]
    assert result.complete


def test_function_without_known_columns_is_unknown() -> None:
    result = run("SELECT * FROM my_func()")
    assert len(result.outputs) == 1 and result.outputs[0].unknown
    assert result.unknown_reasons == ("columns returned by my_func() cannot be known",)
    result = run("SELECT * FROM patients p, my_func(p.ssn) f")
    check(result.outputs[0], pat("id"), DIRECT)
    assert result.outputs[-1].unknown
    assert result.outputs[-1].sources == pat("ssn")


def test_xmltable_and_json_table() -> None:
    result = run(
        "SELECT x.* FROM patients p, XMLTABLE('/r' PASSING xmlelement(name r, p.ssn) "
        "COLUMNS s text PATH 's', n FOR ORDINALITY) x"
    )
    assert [(o.name, o.sources) for o in result.outputs] == [("s", pat("ssn")), ("n", NONE)]
    result = run(
        "SELECT jt.* FROM patients p, JSON_TABLE(to_jsonb(p.phone), '$' COLUMNS (v text PATH '$', "
        "o FOR ORDINALITY, NESTED PATH '$[*]' COLUMNS (w int PATH '$'))) jt"
    )
    assert [(o.name, o.sources) for o in result.outputs] == [("v", pat("phone")), ("o", NONE), ("w", pat("phone"))]


# --------------------------------------------------------------------------
# Unknown relations and unsupported nodes
# --------------------------------------------------------------------------


def test_unknown_relation_star_is_unknown() -> None:
    result = run("SELECT * FROM unknown_table")
    assert [(o.name, o.unknown) for o in result.outputs] == [("*", True)]
    assert result.unknown_reasons == ("relation unknown_table is not in the catalog",)
    assert not result.complete


def test_columns_that_may_come_from_an_unknown_relation_are_unknown() -> None:
    assert only("SELECT secret FROM patients, unknown_table").unknown
    assert only("SELECT u.x FROM unknown_table u").unknown
    result = run("SELECT p.ssn FROM patients p, unknown_table u")
    check(result.outputs[0], pat("ssn"), DIRECT)
    assert not result.complete  # the relation list is incomplete even though the output is known


def test_unknown_relation_inside_a_subquery_propagates() -> None:
    output = only("SELECT s.v FROM (SELECT * FROM unknown_table) s")
    assert output.unknown


def test_unsupported_expression_node_is_unknown_with_its_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    children = dict(lineage_module._COMPUTED_CHILDREN)
    del children[lineage_module.ast.NullTest]
    monkeypatch.setattr(lineage_module, "_COMPUTED_CHILDREN", children)
    result = run("SELECT ssn IS NULL, id FROM patients WHERE phone IS NOT NULL")
    assert result.outputs[0].unknown
    assert result.outputs[0].sources == pat("ssn")
    check(result.outputs[1], pat("id"), DIRECT)
    assert filters_if_run(result) == pat("phone")
    assert result.unknown_reasons == ("unsupported expression node NullTest",)


def test_absurdly_nested_subqueries_are_unknown_not_a_crash() -> None:
    sql = "SELECT ssn FROM patients"
    for _ in range(120):
        sql = f"SELECT ({sql})"
    result = run(sql)
    assert result.outputs[0].unknown
    assert "queries are nested too deeply to analyze" in result.unknown_reasons


def test_absurdly_nested_case_is_unknown_with_its_columns() -> None:
    expression = "ssn"
    for _ in range(150):
        expression = f"CASE WHEN id > 0 THEN {expression} END"
    output = only(f"SELECT {expression} FROM patients")
    assert output.unknown
    assert pat("ssn") <= output.sources  # conditions may be included too: over-approximation is safe


def test_parse_trees_too_deep_for_pglast_are_refused() -> None:
    with pytest.raises(UnsupportedStatement):
        run("SELECT " + "(" * 3000 + "1" + ")" * 3000 + " + " + "ARRAY[" * 1100 + "1" + "]" * 1100)


# --------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "filters"),
    [
        ("SELECT id FROM patients WHERE ssn LIKE '123%'", pat("ssn")),
        ("SELECT id FROM patients ORDER BY date_of_birth", pat("date_of_birth")),
        ("SELECT id FROM patients ORDER BY upper(full_name) DESC NULLS LAST", pat("full_name")),
        ("SELECT ssn AS s FROM patients ORDER BY s", pat("ssn")),
        ("SELECT id, ssn FROM patients ORDER BY 2", pat("ssn")),
        ("SELECT zip, count(*) FROM patients GROUP BY 1", pat("zip")),
        ("SELECT upper(zip) AS z FROM patients GROUP BY z", pat("zip")),
        ("SELECT zip FROM patients GROUP BY zip HAVING min(date_of_birth) < '1950-01-01'", pat("zip", "date_of_birth")),
        ("SELECT DISTINCT ON (email) id FROM patients ORDER BY email, phone", pat("email", "phone")),
        ("SELECT DISTINCT zip FROM patients", pat("zip")),  # which values are equal decides the row count
        ("SELECT id FROM patients LIMIT (SELECT count(*) FROM encounters WHERE notes = 'x')", enc("notes")),
        ("SELECT id FROM patients OFFSET (SELECT max(id) FROM patients WHERE ssn = '1')", pat("ssn", "id")),
        # Sampling follows pages and tuple positions, which follow the widths of the values.
        ("SELECT id FROM patients TABLESAMPLE BERNOULLI (10)", pat(*PATIENT_COLUMNS)),
        ("SELECT p.id FROM patients p JOIN encounters e USING (id)", pat("id") | enc("id")),
        ("SELECT id FROM patients WHERE id = ANY (SELECT patient_id FROM encounters)", pat("id") | enc("patient_id")),
    ],
)
def test_inference_channels_go_to_filters(sql: str, filters: frozenset[SourceColumn]) -> None:
    result = run(sql)
    assert filters_if_run(result) == filters
    assert result.complete


def test_where_does_not_leak_into_outputs() -> None:
    result = run("SELECT id FROM patients WHERE ssn LIKE '123%'")
    check(result.outputs[0], pat("id"), DIRECT, "id")
    assert filters_if_run(result) == pat("ssn")


# --------------------------------------------------------------------------
# Statements that are not plain reads
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO patients (ssn) VALUES ('1')",
        "UPDATE patients SET ssn = '1'",
        "DELETE FROM patients",
        "CREATE TABLE t AS SELECT ssn FROM patients",
        "EXPLAIN SELECT ssn FROM patients",
        "SELECT 1; SELECT 2",
        "SELECT ssn INTO copy FROM patients",
        "WITH d AS (DELETE FROM patients RETURNING ssn) SELECT * FROM d",
        "SELECT * FROM patients WHERE id IN (WITH d AS (UPDATE patients SET ssn = '' RETURNING id) SELECT id FROM d)",
        "DECLARE c CURSOR FOR SELECT ssn FROM patients",
        "",
        "-- just a comment",
    ],
)
def test_non_reads_are_unsupported(sql: str) -> None:
    with pytest.raises(UnsupportedStatement):
        run(sql)


@pytest.mark.parametrize("sql", ["SELEC ssn FROM patients", "SELECT (", "SELECT 'a\x00' FROM patients"])
def test_unparsable_input_raises_parse_error(sql: str) -> None:
    with pytest.raises(ParseError):
        run(sql)


# --------------------------------------------------------------------------
# DictCatalog and the result type
# --------------------------------------------------------------------------


def test_dict_catalog_resolution() -> None:
    catalog = DictCatalog(
        {("pg_catalog", "pg_class"): ("oid",), ("public", "pg_class"): ("x",), ("public", "t"): ("a",)},
        kinds={("public", "t"): "p"},
        views={("public", "v"): "SELECT a FROM t"},
    )
    assert catalog.resolve(None, "pg_class") == ("pg_catalog", "pg_class")
    assert catalog.resolve("public", "pg_class") == ("public", "pg_class")
    assert catalog.resolve(None, "v") == ("public", "v")
    assert catalog.resolve(None, "missing") is None
    assert catalog.resolve("archive", "t") is None
    assert catalog.kind("public", "t") == "p"
    assert catalog.kind("public", "v") == "v"
    assert catalog.columns("public", "v") is None
    assert catalog.view_definition("public", "v") == "SELECT a FROM t"
    # A view listed without column names takes its definition's names.
    assert [o.name for o in analyze("SELECT * FROM v", catalog).outputs] == ["a"]


def test_search_path_is_configurable() -> None:
    catalog = DictCatalog(CATALOG_TABLES, search_path=("archive", "public"))
    check(only_in(catalog, "SELECT ssn FROM patients"), pat("ssn", schema="archive"), DIRECT)


CATALOG_TABLES = {("public", "patients"): PATIENT_COLUMNS, ("archive", "patients"): PATIENT_COLUMNS}


def only_in(catalog: DictCatalog, sql: str) -> OutputColumn:
    outputs = analyze(sql, catalog).outputs
    assert len(outputs) == 1
    return outputs[0]


def test_lineage_complete_property() -> None:
    known = OutputColumn("a", NONE, DIRECT)
    assert Lineage((known,), NONE, frozenset(), ()).complete
    assert not Lineage((known,), NONE, frozenset(), ("why",)).complete
    assert not Lineage((OutputColumn("a", NONE, TRANSFORMED, unknown=True),), NONE, frozenset(), ()).complete


# --------------------------------------------------------------------------
# Property: no PHI column escapes, and nothing but the documented errors is raised
# --------------------------------------------------------------------------

_COLUMNS = st.sampled_from(PATIENT_COLUMNS)


def _expressions() -> st.SearchStrategy[str]:
    leaves = st.one_of(
        _COLUMNS,
        _COLUMNS.map(lambda c: f"p.{c}"),
        st.sampled_from(["1", "'x'", "NULL", "now()"]),
    )

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        pairs = st.tuples(inner, inner)
        return st.one_of(
            inner.map(lambda e: f"({e})::text"),
            inner.map(lambda e: f"upper({e}::text)"),
            inner.map(lambda e: f"md5({e}::text)"),
            inner.map(lambda e: f"max({e})"),
            inner.map(lambda e: f"count({e})"),
            inner.map(lambda e: f"coalesce({e}, NULL)"),
            inner.map(lambda e: f"CASE WHEN id > 0 THEN {e} END"),
            inner.map(lambda e: f"(SELECT {e} FROM patients p LIMIT 1)"),
            inner.map(lambda e: f"ARRAY[{e}]"),
            inner.map(lambda e: f"json_build_object('k', {e})"),
            inner.map(lambda e: f"lag({e}) OVER (ORDER BY id)"),
            pairs.map(lambda ab: f"concat({ab[0]}, {ab[1]})"),
            pairs.map(lambda ab: f"{ab[0]} || {ab[1]}"),
        )

    return st.recursive(leaves, extend, max_leaves=6)


_FROM_CLAUSES = st.sampled_from(
    [
        "patients p",
        "public.patients p",
        "(SELECT * FROM patients) p",
        "(SELECT p0.* FROM patients p0 JOIN encounters e ON e.patient_id = p0.id) p",
        "(TABLE patients) p",
        "c p",
        "(SELECT * FROM patients UNION ALL SELECT * FROM patients) p",
        "patients p, LATERAL (SELECT 1 AS one) l",
    ]
)


def _query(expressions: Sequence[str], from_clause: str) -> str:
    targets = ", ".join(f"{expression} AS o{index}" for index, expression in enumerate(expressions))
    return f"WITH c AS (SELECT * FROM patients) SELECT {targets} FROM {from_clause}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_expressions(), min_size=1, max_size=4), _FROM_CLAUSES)
def test_property_every_mentioned_phi_column_is_a_source_or_unknown(expressions: list[str], from_clause: str) -> None:
    try:
        result = run(_query(expressions, from_clause))
    except (ParseError, UnsupportedStatement):
        return
    assert len(result.outputs) == len(expressions)
    for expression, output in zip(expressions, result.outputs, strict=True):
        # Inside CASE only the THEN arm is a value; "id > 0" is a condition (a filter).
        mentioned = {column for column in PHI_COLUMNS if column in expression.replace("id > 0", "")}
        assert output.unknown or {src(column) for column in mentioned} <= output.sources, (expression, output)


_TARGETS = (
    "*", "p.*", "p", "ssn", "p.ssn", "upper(ssn)", "phone || ''", "count(*)", "row_to_json(p)", "max(ssn)",
    "(SELECT ssn FROM patients LIMIT 1)", "lag(ssn) OVER (ORDER BY id)", "CASE WHEN ssn > '1' THEN phone END",
    "x.*", "ARRAY(SELECT phone FROM patients)", "unknown_col", "g", "(p).*", "e.notes", "json_agg(p.*)",
)  # fmt: skip
_FROM_ITEMS = (
    "patients p", "archive.patients p", "patient_contacts p", "contact_phones p", "unknown_table p",
    "(SELECT * FROM patients) p", "c p", "generate_series(1, 3) g", "my_func() f", "loop_a p",
    "patients p JOIN encounters e ON e.patient_id = p.id", "patients p NATURAL JOIN archive.patients",
    "patients p, LATERAL (SELECT p.ssn) x", "depression_patients p", "json_to_record('{}') AS r(a int)",
    "visit_counts p", "patients p JOIN encounters e USING (id)", "(VALUES (1)) p(id)",
)  # fmt: skip
_TAILS = (
    "", "WHERE ssn LIKE '1%'", "GROUP BY zip", "ORDER BY 1", "ORDER BY date_of_birth", "LIMIT 1",
    "HAVING count(*) > 1", "UNION SELECT ssn FROM patients", "UNION ALL SELECT * FROM patients", "FOR UPDATE",
)  # fmt: skip
_PREFIXES = (
    "", "WITH c AS (SELECT * FROM patients) ", "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) ",
    "EXPLAIN ", "WITH c AS (DELETE FROM patients RETURNING *) ", "WITH patients AS (SELECT 1 AS ssn) ",
)  # fmt: skip
_JUNK = ("(", ")", ",", ";", "SELECT", "FROM", "||", "'", "\x00", "*", ".", "UNION", "JOIN", "WHERE", "1")


@st.composite
def _select_ish(draw: st.DrawFn) -> str:
    """A SELECT assembled from the pieces above, sometimes with junk spliced in."""
    targets = ", ".join(draw(st.lists(st.sampled_from(_TARGETS), min_size=1, max_size=3)))
    from_items = ", ".join(draw(st.lists(st.sampled_from(_FROM_ITEMS), max_size=2)))
    sql = draw(st.sampled_from(_PREFIXES)) + f"SELECT {targets}"
    if from_items:
        sql += f" FROM {from_items}"
    sql += " " + draw(st.sampled_from(_TAILS))
    for junk in draw(st.lists(st.sampled_from(_JUNK), max_size=2)):
        at = draw(st.integers(0, len(sql)))
        sql = f"{sql[:at]} {junk} {sql[at:]}"
    return sql


@settings(max_examples=400, deadline=None)
@given(_select_ish())
def test_property_never_raises_anything_else(sql: str) -> None:
    try:
        result = run(sql)
    except (ParseError, UnsupportedStatement):
        return
    assert isinstance(result, Lineage)
    if any(output.unknown for output in result.outputs):
        assert result.unknown_reasons
    assert result.filters <= _BASE_COLUMNS
    for output in result.outputs:
        assert output.name
        assert output.sources <= _BASE_COLUMNS
        if output.unknown:
            assert output.derivation is TRANSFORMED


_BASE_COLUMNS = frozenset(
    SourceColumn(schema, table, column)
    for (schema, table), columns in {
        ("public", "patients"): PATIENT_COLUMNS,
        ("archive", "patients"): PATIENT_COLUMNS,
        ("public", "encounters"): ENCOUNTER_COLUMNS,
    }.items()
    for column in columns
)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT query_to_xml('SELECT ssn FROM patients', true, false, '')",
        "SELECT upper(table_to_xml('patients', true, false, '')::text)",
        "SELECT id, ext.dblink('host=x', 'SELECT ssn FROM patients') FROM patients",
        "SELECT t.s FROM dblink('host=x', 'SELECT ssn FROM patients') AS t(s text)",
        "SELECT * FROM ts_stat('SELECT to_tsvector(notes) FROM encounters')",
    ],
)
def test_functions_reading_data_out_of_sight_are_unknown(sql: str) -> None:
    result = run(sql)
    assert result.outputs[-1].unknown
    assert any("reads data that lineage cannot follow" in reason for reason in result.unknown_reasons)
