"""Celery tasks: thin wrappers around plain functions that tests call directly."""

from __future__ import annotations

from celery import shared_task

from audit import chain


@shared_task(name="audit.extend_chain")
def extend_chain_task() -> int:
    return chain.extend_chain()


@shared_task(name="audit.run_export")
def run_export_task(export_id: int) -> str:
    from audit.evidence_jobs import run_export

    return run_export(export_id)


@shared_task(name="audit.open_review_periods")
def open_review_periods_task() -> int:
    from audit.activity_review import ensure_periods

    return ensure_periods()
