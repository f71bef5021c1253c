"""Where the wire gateway's audit records go: the local journal when one is configured, else straight to the table."""

from __future__ import annotations

from django.conf import settings

from audit.batch_writer import AuditBatchWriter
from audit.journal import AuditJournal

WireAuditSink = AuditJournal | AuditBatchWriter


def open_wire_audit_sink() -> WireAuditSink:
    """``AUDIT_JOURNAL_DIR`` set: fsync to the journal, ship in batches (fast). Unset: group commit to the table."""
    if settings.AUDIT_JOURNAL_DIR:
        return AuditJournal(settings.AUDIT_JOURNAL_DIR, max_lag_seconds=settings.AUDIT_JOURNAL_MAX_LAG_SECONDS)
    return AuditBatchWriter()
