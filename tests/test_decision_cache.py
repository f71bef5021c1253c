"""The wire's decision cache: literals may vary, nothing else may; only allowed plain SELECTs are kept."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.decision_cache import DecisionCache, Shape, statement_shape
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


def _shape_key(sql: str) -> str:
    shape = statement_shape(sql)
    assert shape is not None
    return shape.normalized


def test_literals_share_a_shape_identifiers_do_not() -> None:
    assert _shape_key("SELECT * FROM t WHERE a = 1") == _shape_key("SELECT * FROM t WHERE a = 22")
    assert _shape_key("SELECT * FROM t WHERE a = 'x'") == _shape_key("SELECT * FROM t WHERE a = 'yy'")
    assert _shape_key("SELECT * FROM archive.patients") != _shape_key("SELECT * FROM public.patients")
    assert _shape_key("SELECT a FROM t") != _shape_key("SELECT b FROM t")
    assert _shape_key("SELECT * FROM t") != _shape_key("SELECT * FROM t FOR UPDATE")
    assert _shape_key("SELECT 1") != _shape_key("SELECT 1; DELETE FROM t")
    assert _shape_key("SELECT a FROM t ORDER BY 1") != _shape_key("SELECT a FROM t ORDER BY 2")
    assert _shape_key("SELECT a FROM t GROUP BY 1") != _shape_key("SELECT a FROM t GROUP BY 2")


def test_text_with_a_dollar_is_never_keyed_by_shape() -> None:
    """``$2`` in a real statement must not collide with a constant normalized to ``$2``."""
    assert statement_shape("SELECT $1, a FROM t") is None
    assert statement_shape("SELECT $$x$$") is None
    assert _shape_key("SELECT 5, a FROM t") == "SELECT $1, a FROM t"  # what the collision would have been


POSITIONAL = [  # {n} is 1 when stored, 2 when probed
    "SELECT id, ssn FROM patients ORDER BY {n}",
    "SELECT id, ssn FROM patients GROUP BY 1, 2 ORDER BY {n}",
    "SELECT id, ssn FROM patients GROUP BY {n}",
    "SELECT DISTINCT ON ({n}) id, ssn FROM patients",
    "SELECT id, ssn FROM patients GROUP BY ROLLUP ({n})",
    "SELECT id, ssn FROM patients GROUP BY CUBE ({n})",
    "SELECT id, ssn FROM patients GROUP BY GROUPING SETS (({n}))",
    "SELECT id FROM patients UNION SELECT ssn FROM patients ORDER BY {n}",
    "SELECT * FROM (SELECT id, ssn FROM patients ORDER BY ({n})) s",
    "WITH x AS (SELECT id, ssn FROM patients ORDER BY {n}) SELECT id FROM x",
]


@pytest.mark.parametrize("template", POSITIONAL)
def test_a_column_position_is_never_a_blanked_literal(template: str) -> None:
    """``ORDER BY 2`` may sort on a PHI column (an inference leak) where ``ORDER BY 1`` did not: a cached
    decision for one must never answer for the other."""
    stored, probe = template.replace("{n}", "1"), template.replace("{n}", "2")
    cache, snapshot = DecisionCache(), catalog()
    _, shape = cache.lookup("clinic", stored, snapshot)
    cache.store("clinic", shape, allowed(stored, snapshot))
    assert cache.lookup("clinic", stored, snapshot)[0] is not None  # the exact text is remembered
    assert cache.lookup("clinic", probe, snapshot)[0] is None


def test_a_dollar_statement_is_still_remembered_by_exact_text() -> None:
    cache, snapshot = DecisionCache(), catalog()
    sql = "SELECT upper(name) FROM public.staff WHERE id = $1"
    _, shape = cache.lookup("clinic", sql, snapshot)
    cache.store("clinic", shape, allowed(sql, snapshot))
    assert cache.lookup("clinic", sql, snapshot)[0] is not None
    assert cache.lookup("clinic", sql.replace("$1", "$2"), snapshot)[0] is None


def test_hit_only_for_the_same_shape_and_snapshot() -> None:
    cache, snapshot = DecisionCache(), catalog()
    decision = allowed("SELECT upper(name) FROM public.staff WHERE id = 1", snapshot)
    _, shape = cache.lookup("clinic", "SELECT upper(name) FROM public.staff WHERE id = 1", snapshot)
    cache.store("clinic", shape, decision)
    assert cache.lookup("clinic", "SELECT upper(name) FROM public.staff WHERE id = 99", snapshot)[0] is decision
    assert cache.lookup("clinic", "SELECT upper(name) FROM archive.staff WHERE id = 99", snapshot)[0] is None
    assert cache.lookup("other", "SELECT upper(name) FROM public.staff WHERE id = 99", snapshot)[0] is None
    assert cache.lookup("clinic", "SELECT upper(name) FROM public.staff WHERE id = 99", catalog())[0] is None
    assert cache.lookup("clinic", "SELECT upper(name) FROM public.staff WHERE id = 1\x00", snapshot) == (None, None)
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


def test_a_decision_made_before_any_snapshot_was_loaded_is_still_kept() -> None:
    """The first statement a gateway sees finds no snapshot (lookup gives no key); its decision is kept anyway."""
    cache, snapshot = DecisionCache(), catalog()
    sql = "SELECT upper(name) FROM public.staff WHERE id = 1"
    decision, key = cache.lookup("clinic", sql, None)
    assert decision is None and key == Shape("SELECT upper(name) FROM public.staff WHERE id = $1", sql)
    cache.store("clinic", key, allowed(sql, snapshot))
    assert cache.lookup("clinic", sql, snapshot)[0] is not None
    assert cache.lookup("clinic", sql.replace("= 1", "= 2"), snapshot)[0] is not None  # by shape too


SAME_SHAPE = [  # (the text the decision was made for, another text with the same normalized form)
    ("SELECT 1", "SELECT 2"),
    ("SELECT a FROM t WHERE a = 'x'", "SELECT a FROM t WHERE a = 'y'"),
    ("SELECT 1; SELECT 2", "SELECT 3; SELECT 4"),
    ("DECLARE c CURSOR FOR SELECT 1", "DECLARE c CURSOR FOR SELECT 2"),
    ("SET application_name = 1", "SET application_name = 'x'"),  # not a SELECT: parsed every time
    ("COMMIT", "COMMIT"),
]


@pytest.mark.parametrize(("first", "later"), SAME_SHAPE)
def test_the_wire_works_out_a_cached_decisions_effects_once_and_gets_the_same_answer(first: str, later: str) -> None:
    """The fast path asks what a statement does to the session's names once per cached decision, not once per
    text (a parse costs ~100 µs): every text of one decision must get the answer a parse of it gives."""
    from gateway.wire.book import statement_effects
    from gateway.wire.session import effects_of_cached_decision

    decision = allowed(first, catalog())
    assert _shape_key(first) == _shape_key(later)
    assert effects_of_cached_decision(decision, first) == statement_effects(first)
    assert effects_of_cached_decision(decision, later) == statement_effects(later)


def test_entries_of_an_older_snapshot_are_dropped_when_a_new_one_is_seen() -> None:
    """A decision is valid only under its snapshot, and each entry holds that snapshot: kept until the next clear,
    every snapshot loaded since (one per CATALOG_TTL_SECONDS, a few MB each with its function catalog) stayed in
    the gateway's memory (issue 15's soak). Other data sources' entries are left alone."""
    import gc
    import weakref

    cache, old, other = DecisionCache(), catalog(), catalog()
    for n in range(3):  # varying literals: the exact-text level grows as well as the shape level
        sql = f"SELECT upper('x') WHERE {n} = {n}"
        _, shape = cache.lookup("clinic", sql, old)
        cache.store("clinic", shape, allowed(sql, old))
    _, shape = cache.lookup("archive", "SELECT 1", other)
    cache.store("archive", shape, allowed("SELECT 1", other))
    gone = weakref.ref(old)
    del old, shape
    new = catalog()
    assert cache.lookup("clinic", "SELECT upper('x') WHERE 0 = 0", new)[0] is None
    gc.collect()
    assert gone() is None, "the older snapshot is still held by the cache"
    assert cache.lookup("archive", "SELECT 1", other)[0] is not None
