"""A short preview of a result, exactly as it was sent (masked), kept in the audit record for session replay.

Three rows, forty characters per value: enough for an auditor to see what the agent saw (masked values look
masked) without turning the audit trail into a second copy of the data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

PREVIEW_ROWS = 3
PREVIEW_CHARS = 40


def preview_value(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def wire_value(raw: bytes | None, binary: bool) -> str | None:
    """A DataRow field as sent: text-format values decoded, binary ones only sized."""
    if raw is None:
        return None
    if binary:
        return f"[{len(raw)} bytes, binary]"
    return preview_value(raw.decode("utf-8", "replace"))


def result_preview(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """The preview of rows that are already masked (HTTP API, ticket results)."""
    kept: list[list[str | None]] = []
    for row in rows:
        if len(kept) >= PREVIEW_ROWS:
            break
        kept.append([preview_value(value) for value in row])
    return {"columns": list(columns), "rows": kept}
