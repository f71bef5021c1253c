"""Withholding computed PHI: the statement that runs is rewritten so that a masked computed column never runs.

A computed value over PHI is redacted in the result, but that is not enough: whether ``1 / (ascii(ssn) - 57)``
fails, whether ``nullif(ssn, '<guess>')`` is NULL, and how long a computation takes all depend on the value.
The only way none of that reaches the agent is for the expression not to run. Each withheld target-list item
becomes ``CASE WHEN false THEN CAST(<expr> AS text) ELSE '[redacted]' END AS <its name>``:

* PostgreSQL still parses and type-checks the expression (so parameters keep their types and errors that do not
  depend on data, such as a missing column, are reported as before), and an aggregate or window call in it
  keeps the query's shape (one row for an aggregate query);
* the planner drops a CASE arm whose condition is the constant false before it simplifies the arm, so the
  expression is never evaluated, not even by constant folding;
* the column keeps its name and position (ORDER BY 2 still means the same column), and its value is the
  constant the mask would have shown.

The rewrite is printed from pglast's tree, so comments and layout are not kept; the agent's own text is what
the audit trail records, with the text that ran beside it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pglast
from pglast import ast
from pglast.stream import RawStream

from policy.lineage_names import SET_RETURNING_FUNCTIONS, function_name, is_builtin
from policy.lineage_types import UnsupportedStatement
from policy.parse_depth import parse_statements


class CannotWithhold(ValueError):
    """The expression cannot be replaced (a set-returning call in it multiplies rows): hold the statement."""


def withheld_statement(sql: str, targets: Sequence[tuple[int, str]]) -> str:
    """The statement with each (target index, column name) replaced by a constant; raises CannotWithhold."""
    # A tree of its own: parse_statements' trees are memoised and shared, and this one is about to be changed.
    # (The text was parsed and depth-checked by the classifier already, so pglast's direct parse is safe.)
    parse_statements(sql)
    statements = pglast.parse_sql(sql)
    if len(statements) != 1 or statements[0].stmt is None:
        raise UnsupportedStatement("expected exactly one statement")
    statement = statements[0].stmt
    select = _select_of(statement)
    items = select.targetList or ()
    for index, name in targets:
        if not 0 <= index < len(items) or not isinstance(items[index], ast.ResTarget):
            raise CannotWithhold(f"result column {name} does not match the statement's target list")
        target = items[index]
        if _multiplies_rows(target.val):
            raise CannotWithhold(f"result column {name} calls a set-returning function on PHI")
        target.val = _constant_instead_of(target.val)
        target.name = name
    return str(RawStream()(statement))


def _select_of(statement: ast.Node) -> ast.SelectStmt:
    """The SELECT whose target list is the result: the statement itself, or the query of DECLARE CURSOR."""
    query = statement.query if isinstance(statement, ast.DeclareCursorStmt) else statement
    if not isinstance(query, ast.SelectStmt):
        raise UnsupportedStatement(f"{type(query).__name__} has no target list to withhold")
    return query


def _constant_instead_of(expression: ast.Node) -> ast.CaseExpr:
    from policy.masking import REDACTED  # the redaction mask's own output (imported late: it needs Django)

    text = ast.TypeName(names=(ast.String("pg_catalog"), ast.String("text")))
    never = ast.CaseWhen(expr=ast.A_Const(val=ast.Boolean(False)), result=ast.TypeCast(arg=expression, typeName=text))
    return ast.CaseExpr(args=(never,), defresult=ast.A_Const(val=ast.String(REDACTED)))


def _multiplies_rows(expression: object) -> bool:
    """A set-returning call outside any subquery: PostgreSQL refuses it inside CASE, so it cannot be withheld."""
    for node in _nodes_outside_subqueries(expression):
        if isinstance(node, ast.FuncCall):
            schema, name = function_name(node)
            if not is_builtin(schema) or name in SET_RETURNING_FUNCTIONS:
                return True
    return False


def _nodes_outside_subqueries(root: object) -> Iterator[ast.Node]:
    stack: list[object] = [root]
    while stack:
        current = stack.pop()
        if isinstance(current, tuple | list):
            stack.extend(current)
        elif isinstance(current, ast.Node) and not isinstance(current, ast.SubLink):
            yield current
            stack.extend(getattr(current, attribute) for attribute in current)
