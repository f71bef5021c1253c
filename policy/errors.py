"""What of a database error may be shown to a masked identity.

PostgreSQL echoes values in messages (``invalid input syntax for type integer: "Jane Doe"``, unique violations
with ``Key (ssn)=(...)``). Until the lineage engine can prove a message harmless, a statement that touches PHI
gets only the SQLSTATE and its class, never the text; DETAIL, HINT and WHERE are never passed at all.
"""

from __future__ import annotations

_CLASSES = {
    "08": "connection exception",
    "0A": "feature not supported",
    "21": "cardinality violation",
    "22": "data exception",
    "23": "integrity constraint violation",
    "25": "invalid transaction state",
    "28": "invalid authorization",
    "40": "transaction rollback",
    "42": "syntax error or access rule violation",
    "53": "insufficient resources",
    "54": "program limit exceeded",
    "57": "operator intervention (e.g. statement timeout or cancel)",
    "XX": "internal error",
}


def scrub_error(sqlstate: str, message: str, *, touches_phi: bool) -> str:
    if not touches_phi:
        return f"{sqlstate}: {message}"
    category = _CLASSES.get(sqlstate[:2], "error")
    return f"{sqlstate}: {category} (message withheld because the statement involves PHI)"
