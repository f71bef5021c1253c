"""How a held statement is shown to its reviewers: formatted, highlighted, and with the PHI columns it touches.

Highlighting uses PostgreSQL's own scanner (pglast), never patterns over the text, so what is coloured as a
string or a comment is exactly what PostgreSQL will treat as one. The page also shows the exact bytes that
will run (formatting is for reading; the approval is of the bytes and their SHA-256).
"""

from __future__ import annotations

from dataclasses import dataclass

import pglast
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from pglast import ast, parser
from pglast.visitors import Visitor

from approvals.models import Ticket
from policy.models import PhiColumn

_CLASSES = {
    "SCONST": "sql-string",
    "USCONST": "sql-string",
    "XCONST": "sql-string",
    "BCONST": "sql-string",
    "ICONST": "sql-number",
    "FCONST": "sql-number",
    "SQL_COMMENT": "sql-comment",
    "C_COMMENT": "sql-comment",
    "PARAM": "sql-param",
}


def formatted(sql: str) -> str:
    """pglast's pretty printer, or the text as written when it cannot print it (it never changes meaning)."""
    try:
        return str(pglast.prettify(sql, preserve_comments=True))
    except Exception:  # the printer does not cover every statement; the raw text is always correct
        return sql


def highlighted_sql(sql: str) -> SafeString:
    text = formatted(sql)
    raw = text.encode("utf-8")
    try:
        tokens = parser.scan(text)
    except parser.ParseError:
        return mark_safe(escape(text))
    pieces: list[str] = []
    position = 0
    for token in tokens:
        start, end = token.start, token.end + 1  # byte offsets, end inclusive
        pieces.append(escape(raw[position:start].decode("utf-8", "replace")))
        chunk = escape(raw[start:end].decode("utf-8", "replace"))
        css = (
            "sql-keyword"
            if token.kind.endswith("_KEYWORD") and token.kind != "NO_KEYWORD"
            else _CLASSES.get(token.name)
        )
        pieces.append(f'<span class="{css}">{chunk}</span>' if css else chunk)
        position = end
    pieces.append(escape(raw[position:].decode("utf-8", "replace")))
    return mark_safe("".join(pieces))


class _ColumnNames(Visitor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.names: set[str] = set()
        self.star = False

    def visit_ColumnRef(self, ancestors: object, node: ast.ColumnRef) -> None:
        last = (node.fields or ())[-1] if node.fields else None
        if isinstance(last, ast.String) and last.sval:
            self.names.add(last.sval.lower())
        elif isinstance(last, ast.A_Star):
            self.star = True


@dataclass(frozen=True)
class TouchedColumn:
    table: str
    column: str
    phi_type: str
    referenced: bool


def touched_phi_columns(ticket: Ticket) -> list[TouchedColumn]:
    """The PHI-tagged columns of the tables the statement names, marking those it references by name.

    A DELETE or UPDATE affects whole rows: every PHI column of its table is shown, not only those named.
    """
    finder = _ColumnNames()
    try:
        for statement in pglast.parse_sql(ticket.sql):
            finder(statement)
    except parser.ParseError:
        finder.star = True
    tables = {name.split(".")[-1] for name in ticket.relations}
    columns = PhiColumn.objects.filter(datasource=ticket.datasource, table_name__in=tables).order_by(
        "table_name", "column_name"
    )
    return [
        TouchedColumn(
            column.table_name, column.column_name, column.phi_type, finder.star or column.column_name in finder.names
        )
        for column in columns
    ]
