"""The wire's decision cache: literals may vary, nothing else may; only allowed plain SELECTs are kept."""

from __future__ import annotations

import dataclasses

from gateway.decision_cache import DecisionCache, statement_shape
from gateway.pipeline import Decision
from policy.classifier import classify
from policy.function_catalog import SnapshotFunctionCatalog
from policy.target_catalog import TargetCatalog

FUNCTIONS = SnapshotFunctionCatalog(by_qualified_name={("pg_catalog", "upper"): "i"}, search_path=("pg_catalog",))


def catalog() -> TargetCatalog:
    return TargetCatalog(
        relkinds={}, relation_oids={}, tagged_columns={}, tagged_relations=frozenset(), functions=FUNCTIONS
    )


def allowed(sql: str, snapshot: TargetCatalog) -> Decision:
    classification = classify(sql, FUNCTIONS)
    return Decision(verdict=str(classification.verdict), classification=classification, catalog=snapshot)


def test_literals_share_a_shape_identifiers_do_not() -> None:
    assert statement_shape("SELECT * FROM t WHERE a = 1") == statement_shape("SELECT * FROM t WHERE a = 22")
    assert statement_shape("SELECT * FROM t WHERE a = 'x'") == statement_shape("SELECT * FROM t WHERE a = 'yy'")
    assert statement_shape("SELECT * FROM archive.patients") != statement_shape("SELECT * FROM public.patients")
    assert statement_shape("SELECT a FROM t") != statement_shape("SELECT b FROM t")
    assert statement_shape("SELECT * FROM t") != statement_shape("SELECT * FROM t FOR UPDATE")
    assert statement_shape("SELECT 1") != statement_shape("SELECT 1; DELETE FROM t")
    assert statement_shape("SELECT '\x00'") is None


def test_hit_only_for_the_same_shape_and_snapshot() -> None:
    cache, snapshot = DecisionCache(), catalog()
    decision = allowed("SELECT upper(name) FROM public.staff WHERE id = 1", snapshot)
    _, shape = cache.lookup("clinic", "SELECT upper(name) FROM public.staff WHERE id = 1", snapshot)
    cache.store("clinic", shape, decision)
    assert cache.lookup("clinic", "SELECT upper(name) FROM public.staff WHERE id = 99", snapshot)[0] is decision
    assert cache.lookup("clinic", "SELECT upper(name) FROM archive.staff WHERE id = 99", snapshot)[0] is None
    assert cache.lookup("other", "SELECT upper(name) FROM public.staff WHERE id = 99", snapshot)[0] is None
    assert cache.lookup("clinic", "SELECT upper(name) FROM public.staff WHERE id = 99", catalog())[0] is None
    inactive = dataclasses.replace(snapshot, datasource_active=False)
    assert cache.lookup("clinic", "SELECT upper(name) FROM public.staff WHERE id = 1", inactive)[0] is None


def test_only_allowed_selects_are_stored() -> None:
    cache, snapshot = DecisionCache(), catalog()
    for sql in ("DELETE FROM t WHERE id = 1", "SHOW search_path", "SELECT nextval('s')"):
        decision = allowed(sql, snapshot)
        _, shape = cache.lookup("clinic", sql, snapshot)
        cache.store("clinic", shape, decision)
        assert cache.lookup("clinic", sql, snapshot)[0] is None, sql


def test_exact_text_level_follows_the_same_validity_rules() -> None:
    cache, snapshot = DecisionCache(), catalog()
    sql = "SELECT upper(name) FROM public.staff WHERE id = 1"
    decision = allowed(sql, snapshot)
    _, shape = cache.lookup("clinic", sql, snapshot)
    cache.store("clinic", shape, decision)
    assert cache.lookup("clinic", sql, snapshot)[0] is decision  # via shape, then remembered as text
    assert cache.lookup("clinic", sql, snapshot)[0] is decision  # exact text
    assert cache.lookup("clinic", sql, catalog())[0] is None  # a new snapshot invalidates both levels
    assert cache.lookup("other", sql, snapshot)[0] is None
