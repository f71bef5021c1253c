"""How deep a statement's parse tree is, checked before pglast builds Python objects from it.

pglast's C-to-Python conversion recurses; a statement nested a few thousand levels deep (a 30,000-way UNION)
crashes the process. PostgreSQL's own parser has a stack-depth check, so we ask it for the JSON form first and
measure the nesting there. Shared by the classifier and the lineage analyzer.
"""

from __future__ import annotations

import functools

import pglast
from pglast.ast import RawStmt
from pglast.parser import parse_sql_json

MAX_TREE_NESTING = 2000
_NON_BRACKETS = str.maketrans("", "", "0123456789+-.:,abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_ \t\r\n")


def json_nesting_depth(tree_json: str) -> int:
    """Deepest bracket nesting of a JSON document, ignoring brackets inside strings."""
    unescaped = tree_json.replace("\\\\", "").replace('\\"', "")
    brackets = "".join(unescaped.split('"')[::2]).translate(_NON_BRACKETS)
    depth = deepest = 0
    for char in brackets:
        if char in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "}]":
            depth -= 1
    return deepest


def too_deep(tree_json: str) -> bool:
    # Nesting can never exceed the number of opening brackets, which C counts in a few microseconds; only a
    # document with more of them than the limit (a huge statement, or brackets inside strings) needs the walk.
    if tree_json.count("{") + tree_json.count("[") <= MAX_TREE_NESTING:
        return False
    return json_nesting_depth(tree_json) > MAX_TREE_NESTING


class TooDeep(ValueError):
    """The statement nests deeper than MAX_TREE_NESTING; callers map this to their own refusal."""


@functools.lru_cache(maxsize=256)
def parse_statements(sql: str) -> tuple[RawStmt, ...]:
    """pglast's parse tree, depth-checked first, memoised per text.

    The classifier and the lineage analyzer both need the tree of the same text, one right after the other;
    building pglast's Python nodes is the expensive part (about 270 µs for a 5-way join), so it happens once.
    Neither caller mutates the nodes. Raises pglast's ParseError, UnicodeError, or TooDeep.
    """
    if too_deep(parse_sql_json(sql)):
        raise TooDeep(f"statement is nested more than {MAX_TREE_NESTING} levels deep")
    return tuple(pglast.parse_sql(sql))
