"""Risk levels that mean something (issue 14): the classifier ranks held statements by the harm they can do.

critical: data destroyed or rewritten in every row (DROP TABLE, TRUNCATE, DROP COLUMN, ALTER TYPE ... USING,
          DROP ... CASCADE, UPDATE/DELETE without WHERE or with a WHERE that does not depend on the row);
high:     writes to PHI columns, schema changes that rewrite, lock or break (ALTER TYPE, renames, constraints,
          drops of indexes and views), code that cannot be inspected;
moderate: additive schema changes (nullable ADD COLUMN, CREATE INDEX, CREATE TABLE) and bounded writes.

Pure tests: pglast and in-memory catalogs, no database.
"""

from __future__ import annotations

import pytest

from policy.classifier import PhiColumns, Risk, Verdict, classify
from policy.lineage import DictCatalog
from policy.target_catalog import Tag, TargetCatalog

TABLES = {
    ("public", "patients"): ("id", "mrn", "full_name", "ssn", "phone", "note"),
    ("public", "t"): ("id", "a", "b"),
    ("public", "u"): ("id",),
}
PHI = {("public", "patients"): frozenset({"full_name", "ssn", "phone"})}


class Functions:
    """Every function is immutable: these tests are about statements, not calls."""

    def volatility(self, schema: str | None, name: str) -> str | None:
        return "i"


class PhiCatalog(DictCatalog):
    """A relation catalog that knows the PHI tags, as the gateway's TargetCatalog does."""

    def phi_columns(self, schema: str, name: str) -> frozenset[str]:
        return PHI.get((schema, name), frozenset())


CATALOG = PhiCatalog(TABLES, views={("public", "patient_names"): "SELECT id, full_name FROM public.patients"})


def risk_of(sql: str) -> tuple[Risk, int, tuple[str, ...]]:
    result = classify(sql, Functions(), relations=CATALOG)
    assert result.verdict is Verdict.HELD, result.reasons
    return result.risk, result.approvals_required, result.reasons


CRITICAL = [
    ("DROP TABLE patients", 2, "destroys the table and every row in it"),
    ("drop table if exists t, u", 2, "destroys the table"),
    ("drop type mood cascade", 2, "CASCADE also drops"),
    ("drop view v cascade", 2, "CASCADE"),
    ("truncate t", 2, "TRUNCATE removes every row"),
    ("truncate table patients restart identity", 2, "TRUNCATE"),
    ("alter table t drop column a", 2, "DROP COLUMN a destroys that column in every row"),
    ("alter table t add column c int, drop column b", 2, "DROP COLUMN b"),
    ("alter table t alter column a type int using 0", 2, "TYPE ... USING rewrites that column in every row"),
    ("delete from t", 2, "DELETE without WHERE affects every row"),
    ("update t set a = 1", 2, "UPDATE without WHERE affects every row"),
    ("delete from t where true", 2, "does not depend on the row"),
    ("update t set a = 1 where 1 = 1", 2, "does not depend on the row"),
    ("delete from t where not false", 2, "does not depend on the row"),
    ("delete from t where id = 1 or true", 2, "does not depend on the row"),
    ("delete from t where $1", 2, "does not depend on the row"),
    ("delete from t where exists (select 1 from u)", 2, "does not depend on the row"),
    ("update patients set ssn = null", 2, "UPDATE without WHERE affects every row"),
    ("with d as (delete from t returning *) select * from d", 2, "DELETE without WHERE"),
]

HIGH = [
    ("update patients set ssn = '123-45-6789' where id = 7", 1, "UPDATE writes PHI columns of public.patients: ssn"),
    ("update patients set (phone, note) = ('555', 'x') where id = 7", 1, "PHI columns of public.patients: phone"),
    ("insert into patients (mrn, full_name) values ('M1', 'Ann')", 1, "INSERT writes PHI columns of public.patients"),
    ("insert into patients values (1, 'M1', 'Ann', '1', '2', 'x')", 1, "full_name, phone, ssn"),
    ("insert into patients (id) values (1) on conflict (id) do update set phone = excluded.phone", 1, "phone"),
    ("delete from patients where id = 7", 1, "DELETE removes PHI from public.patients"),
    ("copy patients from stdin", 1, "COPY writes PHI columns of public.patients"),
    ("merge into patients p using u on p.id = u.id when matched then delete", 1, "MERGE writes PHI columns"),
    ("with x as (update patients set ssn = '1' where id = 1 returning id) select * from x", 1, "ssn"),
    ("update patient_names set full_name = 'x' where id = 1", 1, "writes through patient_names"),
    ("insert into brand_new (a) values (1)", 1, "which the catalog snapshot does not know"),
    ("alter table t alter column a type bigint", 2, "ALTER COLUMN a TYPE rewrites the table"),
    ("alter table t add column c serial", 2, "ALTER TABLE"),
    ("alter table t add column c int default random()", 2, "ALTER TABLE"),
    ("alter table t add column c int not null", 2, "ALTER TABLE"),
    ("alter table t add column c int primary key", 2, "ALTER TABLE"),
    ("alter table t alter column a set not null", 2, "ALTER TABLE"),
    ("alter table t add constraint c check (a > 0)", 2, "ALTER TABLE"),
    ("alter table t rename to v", 2, "RENAME"),
    ("drop index t_a", 2, "DROP INDEX"),
    ("drop view v", 2, "DROP VIEW"),
    ("create or replace view v as select 1", 2, "CREATE VIEW"),
    ("create table t2 as select * from patients", 2, "CREATE TABLE AS"),
    ("select * into t3 from patients", 2, "SELECT INTO"),
    ("create function f() returns int language sql as 'select 1'", 2, "CREATE FUNCTION"),
    ("do $$ begin perform 1; end $$", 2, "DO runs procedural code"),
]

MODERATE = [
    ("alter table t add column c int", 2, "additive, adds a nullable column"),
    ("alter table patients add column c text default 'none'", 2, "additive, adds a nullable column"),
    ("alter table t add column c int null, add column d text", 2, "additive"),
    ("create index on t (a)", 2, "additive, adds an index"),
    ("create unique index concurrently t_b on t (b)", 2, "additive, adds an index"),
    ("create table t4 (id int primary key, note text)", 2, "additive, adds a table"),
    ("create view v2 as select id from t", 2, "additive, adds a view"),
    ("create sequence s2", 2, "additive, adds a sequence"),
    ("comment on table t is 'scratch'", 2, "changes only a comment"),
    ("update t set a = 1 where id = 2", 1, "UPDATE modifies data"),
    ("delete from t where id = 1", 1, "DELETE modifies data"),
    ("delete from t where id = 1 and true", 1, "DELETE modifies data"),
    ("update t set a = 1 where current of c", 1, "UPDATE modifies data"),
    ("insert into t (a) values (1)", 1, "INSERT modifies data"),
    ("update patients set note = 'seen' where id = 7", 1, "UPDATE modifies data"),
    ("insert into patients (id, mrn) values (1, 'M1')", 1, "INSERT modifies data"),
    ("copy patients (id, note) from stdin", 1, "COPY is held for review"),
    ("copy patients to stdout", 1, "COPY is held for review"),
]

LADDER = [(Risk.CRITICAL, *row) for row in CRITICAL] + [(Risk.HIGH, *row) for row in HIGH]
LADDER += [(Risk.MODERATE, *row) for row in MODERATE]


@pytest.mark.parametrize(("risk", "sql", "approvals", "reason"), LADDER, ids=[row[1][:60] for row in LADDER])
def test_each_statement_gets_the_risk_of_the_harm_it_can_do(risk: Risk, sql: str, approvals: int, reason: str) -> None:
    found, needed, reasons = risk_of(sql)
    assert found is risk, reasons
    assert needed == approvals, reasons
    assert any(reason in text for text in reasons), reasons


def test_drop_table_patients_ranks_above_add_column_and_critical_is_reachable() -> None:
    """The issue's example: DROP TABLE patients used to rank like ADD COLUMN, and nothing ever was critical."""
    rank = [Risk.LOW, Risk.MODERATE, Risk.HIGH, Risk.CRITICAL]
    dropped, _, _ = risk_of("DROP TABLE patients")
    added, _, _ = risk_of("ALTER TABLE patients ADD COLUMN allergies text")
    phi_write, _, _ = risk_of("UPDATE patients SET phone = '555-0100' WHERE id = 1")
    assert dropped is Risk.CRITICAL
    assert rank.index(dropped) > rank.index(phi_write) > rank.index(added)


def test_a_plain_explain_of_a_destructive_statement_is_not_ranked_as_the_statement() -> None:
    """EXPLAIN without ANALYZE plans, it does not run: it is allowed, whatever it would explain."""
    result = classify("explain delete from patients", Functions(), relations=CATALOG)
    assert result.verdict is Verdict.ALLOWED and result.risk is Risk.LOW


def test_phi_writes_need_the_tags_and_are_shape_ranked_without_them() -> None:
    """Without PHI tags (a catalog that cannot answer PhiColumns) a bounded write ranks by its shape only."""
    plain = DictCatalog(TABLES)
    assert not isinstance(plain, PhiColumns) and isinstance(CATALOG, PhiColumns)
    result = classify("update patients set ssn = '1' where id = 1", Functions(), relations=plain)
    assert result.risk is Risk.MODERATE
    assert classify("update patients set ssn = '1'", Functions(), relations=plain).risk is Risk.CRITICAL


def test_the_gateways_target_catalog_answers_phi_columns(control_plane: str) -> None:
    """TargetCatalog (what the pipeline classifies with) carries the tags into the ranking."""
    from policy.function_catalog import SnapshotFunctionCatalog

    catalog = TargetCatalog(
        relkinds={1: "r"},
        relation_oids={"public.patients": 1, "patients": 1},
        tagged_columns={(1, 4): Tag("public", "patients", "ssn", "ssn")},
        tagged_relations=frozenset({1}),
        functions=SnapshotFunctionCatalog(by_qualified_name={}, search_path=("pg_catalog",)),
        relation_columns={("public", "patients"): TABLES[("public", "patients")]},
    )
    assert isinstance(catalog, PhiColumns) and catalog.phi_columns("public", "patients") == {"ssn"}
    result = classify("update patients set ssn = '1' where id = 1", catalog.functions, relations=catalog)
    assert result.risk is Risk.HIGH
    assert "UPDATE writes PHI columns of public.patients: ssn" in result.reasons
    assert classify("update patients set note = '1' where id = 1", catalog.functions, relations=catalog).risk == (
        Risk.MODERATE
    )
