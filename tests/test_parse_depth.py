"""The depth check that keeps pathological statements away from pglast's recursive tree building."""

from __future__ import annotations

import pytest
from pglast.parser import parse_sql_json

from policy.parse_depth import MAX_TREE_NESTING, TooDeep, json_nesting_depth, parse_statements, too_deep


def test_nesting_is_measured_outside_strings() -> None:
    assert json_nesting_depth('{"a": [1, {"b": "[[[{{{"}]}') == 3
    assert json_nesting_depth('{"a": "\\"[[[\\\\"}') == 1


def test_many_brackets_inside_strings_are_not_depth() -> None:
    """More brackets than the limit takes the exact walk, which ignores the ones inside literals."""
    sql = "SELECT '" + "[{" * MAX_TREE_NESTING + "'"
    assert not too_deep(parse_sql_json(sql))
    assert parse_statements(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "(" * 3000 + "1" + ")" * 3000 + " + " + "ARRAY[" * 1100 + "1" + "]" * 1100,
        " UNION ALL ".join(["SELECT 1"] * 30_000),
    ],
)
def test_deep_trees_are_refused_before_pglast_builds_them(sql: str) -> None:
    assert too_deep(parse_sql_json(sql))
    with pytest.raises(TooDeep):
        parse_statements(sql)


def test_a_join_is_far_from_the_limit() -> None:
    tree = parse_sql_json("SELECT p.id FROM patients p JOIN encounters e ON e.patient_id = p.id WHERE e.id > 5")
    assert tree.count("{") + tree.count("[") < MAX_TREE_NESTING
    assert not too_deep(tree)
