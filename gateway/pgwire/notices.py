"""Building ErrorResponse and NoticeResponse messages the way PostgreSQL does.

Clients show 'M', 'D' and 'H' to users and branch on 'C' (SQLSTATE) and 'V' (severity), so the gateway's
own refusals need the same fields filled the same way to read like ordinary server errors.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final

from gateway.pgwire.backend import ErrorResponse, NoticeResponse
from gateway.pgwire.errors import ProtocolError

ERROR_SEVERITIES: Final = frozenset({"ERROR", "FATAL", "PANIC"})
NOTICE_SEVERITIES: Final = frozenset({"WARNING", "NOTICE", "DEBUG", "INFO", "LOG"})
_SQLSTATE: Final = re.compile(r"[0-9A-Z]{5}")


class ErrorField(StrEnum):
    """Single-letter field codes of ErrorResponse/NoticeResponse (StrEnum, so usable as dict keys)."""

    SEVERITY_LOCALIZED = "S"
    SEVERITY = "V"
    SQLSTATE = "C"
    MESSAGE = "M"
    DETAIL = "D"
    HINT = "H"
    POSITION = "P"
    INTERNAL_POSITION = "p"
    INTERNAL_QUERY = "q"
    WHERE = "W"
    SCHEMA_NAME = "s"
    TABLE_NAME = "t"
    COLUMN_NAME = "c"
    DATA_TYPE_NAME = "d"
    CONSTRAINT_NAME = "n"
    FILE = "F"
    LINE = "L"
    ROUTINE = "R"


def _report_fields(
    severity: str, allowed: frozenset[str], sqlstate: str, message: str, detail: str | None, hint: str | None
) -> dict[str, str]:
    if severity not in allowed:
        raise ValueError(f"severity must be one of {sorted(allowed)}, got {severity!r}")
    if not _SQLSTATE.fullmatch(sqlstate):
        raise ValueError(f"SQLSTATE must be five characters 0-9/A-Z, got {sqlstate!r}")
    fields = {
        ErrorField.SEVERITY_LOCALIZED: severity,
        ErrorField.SEVERITY: severity,
        ErrorField.SQLSTATE: sqlstate,
        ErrorField.MESSAGE: message,
    }
    if detail is not None:
        fields[ErrorField.DETAIL] = detail
    if hint is not None:
        fields[ErrorField.HINT] = hint
    return {str(code): value for code, value in fields.items()}


def error_response(
    severity: str, sqlstate: str, message: str, detail: str | None = None, hint: str | None = None
) -> ErrorResponse:
    """An ErrorResponse with S/V/C/M (and D/H when given). Severity: ERROR, FATAL or PANIC."""
    return ErrorResponse(_report_fields(severity, ERROR_SEVERITIES, sqlstate, message, detail, hint))


def notice_response(
    severity: str, sqlstate: str, message: str, detail: str | None = None, hint: str | None = None
) -> NoticeResponse:
    """A NoticeResponse with S/V/C/M (and D/H when given). Severity: WARNING, NOTICE, DEBUG, INFO or LOG."""
    return NoticeResponse(_report_fields(severity, NOTICE_SEVERITIES, sqlstate, message, detail, hint))


def protocol_error_response(error: ProtocolError) -> ErrorResponse:
    """The FATAL ErrorResponse to send before closing a connection whose client broke the protocol."""
    return error_response("FATAL", error.sqlstate, error.message)
