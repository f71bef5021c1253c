"""Evidence exports asked for in the UI: queued as a row, built by the executor, progress reported back.

The bundle is written under ``EVIDENCE_DIR``, which the web process serves from: in the demo both run on one
machine; a deployment mounts the same volume (or swaps this for object storage).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.evidence import ExportFilters, StatementLiterals, export_evidence
from audit.models import EvidenceExport, ExportStatus
from audit.periods import parse_moment
from audit.private_files import private_directory
from audit.recorder import Context
from identity.principal import Principal

log = logging.getLogger(__name__)
_PROGRESS_EVERY_SECONDS = 0.5


def bundle_path(export: EvidenceExport) -> Path:
    return Path(settings.EVIDENCE_DIR) / export.file_name


def request_export(
    principal: Principal, filters: ExportFilters, context: Context, *, reveal_literals: bool = False
) -> EvidenceExport:
    """Queue an export; the task starts only once the row is committed. The caller decides who may ask for
    ``reveal_literals`` (compliance officers); the export's audit record says which form the bundle carries."""
    literals = StatementLiterals.REVEALED if reveal_literals else StatementLiterals.MASKED
    from audit.tasks import run_export_task

    with transaction.atomic():
        export = EvidenceExport.objects.create(
            requested_by=principal.human,
            filters={
                **filters.as_manifest(),
                "source_address": context.source_address,
                "statement_literals": literals,
            },
        )
        transaction.on_commit(lambda: run_export_task.delay(export.pk))
    return export


def run_export(export_id: int) -> str:
    """Build one queued export. Runs once: a second delivery of the task finds it no longer queued."""
    if not EvidenceExport.objects.filter(pk=export_id, status=ExportStatus.QUEUED).update(status=ExportStatus.RUNNING):
        return "not queued"
    export = EvidenceExport.objects.select_related("requested_by").get(pk=export_id)
    filters = ExportFilters(
        since=parse_moment(export.filters["since"]),
        until=parse_moment(export.filters["until"]),
        user=export.filters.get("user") or None,
        datasource=export.filters.get("datasource") or None,
    )
    name = f"evidence-{export.pk}-{timezone.now():%Y%m%dT%H%M%S}.zip"
    last_report = 0.0

    def progress(percent: int, what: str) -> None:
        nonlocal last_report
        now = time.monotonic()
        if percent < 100 and now - last_report < _PROGRESS_EVERY_SECONDS:
            return
        last_report = now
        # Called from inside the export's read-only snapshot transaction too: written on the side connection,
        # committed at once, so the page sees it and the snapshot stays read-only.
        EvidenceExport.objects.using(settings.SIDE_DATABASE).filter(pk=export_id).update(
            progress=min(percent, 99), message=what
        )

    try:
        result = export_evidence(
            filters,
            private_directory(Path(settings.EVIDENCE_DIR)) / name,  # bundles hold audit records: 0700, files 0600
            requested_by=Principal(human=export.requested_by),
            context=Context(front="web", source_address=export.filters.get("source_address")),
            progress=progress,
            reveal_literals=export.filters.get("statement_literals") == StatementLiterals.REVEALED,
        )
    except Exception as exc:
        log.exception("evidence export %s failed", export_id)
        EvidenceExport.objects.filter(pk=export_id).update(
            status=ExportStatus.FAILED, message=f"failed: {type(exc).__name__}", finished_at=timezone.now()
        )
        return "failed"
    EvidenceExport.objects.filter(pk=export_id).update(
        status=ExportStatus.DONE,
        progress=100,
        file_name=name,
        events=result.events,
        chain_ok=result.chain_ok,
        message=result.chain_status,
        finished_at=timezone.now(),
    )
    return "done"
