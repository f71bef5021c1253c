"""Logging filters of the web process."""

from __future__ import annotations

import logging


class RoutineRefusalsWithoutTraceback(logging.Filter):
    """A 4xx answer is routine: keep Django's one line ("Forbidden (Permission denied): /audit/"), drop the
    traceback it attaches to a ``PermissionDenied``.

    Django logs every refused page with ``exc_info`` set (``django.core.handlers.exception``), so each reviewer
    who opens the audit trail by mistake printed a full stack. A refusal is an answer, not a fault; 5xx records
    keep their traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if isinstance(status, int) and 400 <= status < 500:
            record.exc_info = None
            record.exc_text = None
        return True
