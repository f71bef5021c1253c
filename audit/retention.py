"""Retention: purge audit events older than the retention period, keeping what remains verifiable.

The cut is a prefix of the chain: the longest run of links, from the start, whose events are all older than
the cutoff (an old event chained after a young one stays until the young one may go too). A checkpoint is
signed at the cut (reason ``purge``) before anything is removed; ``verify_chain`` then starts from it. The
database itself refuses to delete an event younger than six years, whatever the caller or the settings say
(migration 0004), and checkpoints are never deleted.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit.chain import SEQUENCER_LOCK, extend_chain, sign_checkpoint
from audit.models import AuditEvent, CheckpointReason, EventKind


class RetentionRefused(Exception):
    """The requested cut would remove events younger than the retention period."""


@dataclass(frozen=True)
class PurgeResult:
    cutoff: datetime
    through_seq: int
    events: int


def earliest_allowed_cutoff() -> datetime:
    return timezone.now() - timedelta(days=settings.AUDIT_RETENTION_DAYS)


def purge(before: datetime | None = None, *, dry_run: bool = False) -> PurgeResult:
    """Remove chained events older than ``before`` (default: the retention period ago)."""
    limit = earliest_allowed_cutoff()
    cutoff = before or limit
    if cutoff > limit:
        raise RetentionRefused(
            f"events younger than {settings.AUDIT_RETENTION_DAYS} days (before {limit:%Y-%m-%d}) must be kept"
        )
    extend_chain()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SEQUENCER_LOCK])  # no chaining while we cut
        cursor.execute(
            "SELECT min(l.seq) FROM audit_chainlink l JOIN audit_auditevent e ON e.id = l.event_id "
            "WHERE e.occurred_at >= %s",
            [cutoff],
        )
        first_kept = cursor.fetchone()[0]
        if first_kept is None:
            cursor.execute("SELECT coalesce(max(seq), 0) FROM audit_chainlink")
            through = cursor.fetchone()[0]
        else:
            through = first_kept - 1
        cursor.execute("SELECT coalesce(min(seq), 1) - 1 FROM audit_chainlink")
        already = cursor.fetchone()[0]
        if through <= already:
            return PurgeResult(cutoff, already, 0)
        cursor.execute("SELECT count(*) FROM audit_chainlink WHERE seq <= %s", [through])
        count = cursor.fetchone()[0]
        if dry_run:
            return PurgeResult(cutoff, through, count)
        cursor.execute("SELECT chain_hash FROM audit_chainlink WHERE seq = %s", [through])
        sign_checkpoint(cursor, through, bytes(cursor.fetchone()[0]), CheckpointReason.PURGE)
        cursor.execute("SET LOCAL phigate.audit_purge = 'on'")  # the triggers still check each row's age
        cursor.execute(
            "CREATE TEMP TABLE purged_events ON COMMIT DROP AS SELECT event_id FROM audit_chainlink WHERE seq <= %s",
            [through],
        )
        cursor.execute("DELETE FROM audit_chainlink WHERE seq <= %s", [through])
        cursor.execute("DELETE FROM audit_auditevent WHERE id IN (SELECT event_id FROM purged_events)")
        AuditEvent.objects.create(
            kind=EventKind.AUDIT_PURGED,
            actor_name=f"os:{getpass.getuser()}"[:150],
            front="cli",
            summary=f"{count} audit events older than {cutoff:%Y-%m-%d} purged (chain through seq {through})",
            details={"cutoff": cutoff.isoformat(), "through_seq": through, "events": count},
        )
    return PurgeResult(cutoff, through, count)
