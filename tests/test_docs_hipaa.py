"""docs/hipaa.md names, for each HIPAA specification, the test that proves it: every test it names must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


def test_every_test_the_hipaa_map_names_exists() -> None:
    text = (REPO / "docs" / "hipaa.md").read_text()
    references = REFERENCE.findall(text)
    assert len(references) >= 20, "the map names the tests that prove each row"
    missing = []
    for file, name in references:
        path = REPO / file
        if not path.is_file():
            missing.append(file)
        elif name and name not in defined_tests(path):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/hipaa.md names tests that do not exist: {missing}"


def test_every_row_names_a_test_or_says_it_has_none() -> None:
    rows = [line for line in (REPO / "docs" / "hipaa.md").read_text().splitlines() if line.startswith("| ")]
    headers = ("| ---", "| what phigate does", "| specification")
    body = [row for row in rows if not row.startswith(headers)]
    assert body
    for row in body:
        assert REFERENCE.search(row) or "| none |" in row, row
