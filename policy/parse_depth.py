"""How deep a statement's parse tree is, checked before pglast builds Python objects from it.

pglast's C-to-Python conversion recurses; a statement nested a few thousand levels deep (a 30,000-way UNION)
crashes the process. PostgreSQL's own parser has a stack-depth check, so we ask it for the JSON form first and
measure the nesting there. Shared by the classifier and the lineage analyzer.
"""

from __future__ import annotations

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
    return json_nesting_depth(tree_json) > MAX_TREE_NESTING
