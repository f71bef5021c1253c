"""Celery tasks: thin wrappers around plain functions that tests call directly."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_ready

from approvals import execution, lifecycle
from approvals.slack import tasks as slack_tasks  # noqa: F401  (registers the Slack notification tasks)

log = logging.getLogger(__name__)


@shared_task(name="approvals.execute_ticket")
def execute_ticket_task(ticket_id: int, recovering: bool = False) -> str:
    report = execution.execute_ticket(ticket_id, recovering=recovering)
    return report.status


@shared_task(name="approvals.expire_overdue")
def expire_overdue_task() -> int:
    return lifecycle.expire_overdue()


@worker_ready.connect
def _recover_after_restart(**_: Any) -> None:
    """A worker that starts may be replacing one that died mid-execution: let the ledger settle those tickets."""
    for ticket_id in execution.recover_interrupted():
        log.info("recovering ticket %s left executing", ticket_id)
        execute_ticket_task.delay(ticket_id, recovering=True)
