"""A reason an agent gives inside the statement itself, for fronts that have no field for one (the wire protocol).

The agent starts the statement with a comment::

    /* phigate-reason: dose corrected after pharmacist review */ UPDATE prescriptions SET dose = $1 WHERE id = $2
    -- phigate-reason: remove the duplicate row

The comment is read with PostgreSQL's own scanner (pglast), never with patterns over the text: only what
PostgreSQL itself treats as a comment, before the statement's first token, counts, so a string literal or a
comment further in cannot pose as the reason. The comment stays in the statement: it is part of the bytes that
are approved and run, and PostgreSQL ignores it. It works with any client and needs no connection setting.
"""

from __future__ import annotations

import unicodedata

from pglast import parser

PREFIX = "phigate-reason:"
MAX_LENGTH = 2000  # the API's limit for a reason


def reason_in_statement(sql: str) -> str:
    """The reason given in the statement's leading comments ("" when there is none)."""
    try:
        tokens = parser.scan(sql)
    except parser.ParseError:
        return ""
    raw = sql.encode("utf-8")
    reasons: list[str] = []
    for token in tokens:
        if token.name not in ("C_COMMENT", "SQL_COMMENT"):
            break
        text = raw[token.start : token.end + 1].decode("utf-8", "replace")
        body = text[2:-2] if token.name == "C_COMMENT" else text[2:]
        body = body.strip()
        if body[: len(PREFIX)].lower() == PREFIX:
            reasons.append(body[len(PREFIX) :])
    return _clean(" ".join(reasons))


def with_statement_reason(sql: str, reason: str) -> str:
    """The ticket's reason: the one in the statement, then the one the front supplied, when both exist."""
    given = reason_in_statement(sql)
    if not given:
        return reason
    if not reason or reason == given:
        return given
    return f"{given} ({reason})"


def _clean(text: str) -> str:
    """One line of printable text: control characters (a comment may hold newlines or escapes) become spaces."""
    printable = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    return " ".join(printable.split())[:MAX_LENGTH]
