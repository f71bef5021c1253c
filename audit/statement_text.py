"""Statement text as audit viewers see it: every literal masked, by PostgreSQL's own scanner.

Why: an agent's statement can carry PHI in its constants (``WHERE ssn = '123-45-6789'``). The audit trail keeps
the statement as sent (the chain hashes it), but a search result, a replay or an evidence bundle shows it with
every string, bit-string, hex and numeric constant replaced by ``'…'``, and every comment by ``/*…*/``. The
scanner is the one the server uses (pglast's ``scan``), so dollar quotes, ``E''`` escapes and nested comments
are read as PostgreSQL reads them; never a regex. Text the scanner cannot read is withheld whole (fail closed).
Seeing the literals is a separate, audited act (``audit.literals_revealed``).
"""

from __future__ import annotations

from pglast import parser

MASK = "'…'"
COMMENT_MASK = "/*…*/"
WITHHELD = "[statement withheld: it could not be read to mask its literals]"
_LITERALS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})


def mask_literals(statement: str | None) -> str | None:
    """``statement`` with its constants and comments masked; None stays None."""
    if not statement:
        return statement
    try:
        tokens = parser.scan(statement)
    except Exception:  # pglast raises its own ParseError and, on odd input, others: withhold, never show raw
        return WITHHELD
    # The scanner reports character offsets into the text (inclusive ends) and reports comments as tokens.
    out: list[str] = []
    position = 0
    for token in tokens:
        gap = statement[position : token.start]
        out.append(gap if not gap.strip() else " " + COMMENT_MASK + " ")  # nothing but blanks is expected here
        if token.name in _LITERALS:
            out.append(MASK)
        elif token.name in _COMMENTS:
            out.append(COMMENT_MASK)
        else:
            out.append(statement[token.start : token.end + 1])
        position = token.end + 1
    tail = statement[position:]
    out.append(tail if not tail.strip() else " " + COMMENT_MASK)
    return "".join(out)
