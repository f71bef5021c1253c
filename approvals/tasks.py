"""Celery tasks: thin wrappers around plain functions that tests call directly.

How an approval always leads to an execution attempt (invariant 5):
- the approval commits APPROVED (the ticket row is the outbox; approvals.lifecycle.unattended_approvals);
- after commit, ``enqueue_execution`` queues it at once, best effort: a failure is logged, never raised into the
  request whose approval has already committed;
- every worker's main process queues the execution sweep at start and every ``EXECUTION_SWEEP_SECONDS``
  (``ExecutionSweepTimer``, registered in phigate/celery.py), so no Celery beat is needed for it; the sweep
  queues an execution for every APPROVED or EXECUTING ticket whose executor lock is free;
- the execution task is acknowledged late, so a message taken by a worker that dies is delivered again by
  Redis (after its visibility timeout); the sweep is what bounds the delay. Every delivery after the first is a
  no-op (approvals.execution).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps, shared_task
from celery.signals import worker_ready
from django.conf import settings

from approvals import execution, lifecycle
from approvals.slack import tasks as slack_tasks  # noqa: F401  (registers the Slack notification tasks)

log = logging.getLogger(__name__)

SWEEP_TASK = "approvals.sweep_executions"


@shared_task(name="approvals.execute_ticket", acks_late=True)
def execute_ticket_task(ticket_id: int, recovering: bool = False) -> str:
    # ``recovering`` stays in the signature so messages queued by older workers still parse.
    report = execution.execute_ticket(ticket_id)
    return report.status


@shared_task(name=SWEEP_TASK)
def sweep_executions_task() -> int:
    """Queue an execution for every approved or executing ticket that no live executor holds."""
    unattended = lifecycle.unattended_approvals()
    for ticket_id in unattended:
        log.info("execution sweep: ticket %s has no live executor; queued", ticket_id)
        enqueue_execution(ticket_id)
    return len(unattended)


@shared_task(name="approvals.expire_overdue")
def expire_overdue_task() -> int:
    return lifecycle.expire_overdue()


def enqueue_execution(ticket_id: int) -> bool:
    """Queue one execution now; False (logged) if the broker cannot take it. The sweep finds it later anyway."""
    try:
        execute_ticket_task.delay(ticket_id)
    except Exception:  # the approval has committed: its outbox row is the ticket itself
        log.warning("could not queue the execution of ticket %s; the execution sweep will", ticket_id, exc_info=True)
        return False
    return True


def queue_sweep(app: Any) -> None:
    """From a worker's main process: one sweep message, no database access here (the sweep runs in the pool)."""
    try:
        app.send_task(SWEEP_TASK, retry=False)
    except Exception as exc:  # broker down: the next tick tries again
        log.warning("could not queue the execution sweep: %s", exc)


class ExecutionSweepTimer(bootsteps.StartStopStep):
    """Worker step: queue the execution sweep every ``EXECUTION_SWEEP_SECONDS`` from the worker's own timer.

    It lives in the main process, so killing a pool child does not stop it, and every worker runs it, so a
    deployment without Celery beat still recovers lost approvals and dead executors.
    """

    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        interval = float(settings.EXECUTION_SWEEP_SECONDS)
        self.tref = parent.timer.call_repeatedly(interval, queue_sweep, (parent.app,), priority=10)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None


@worker_ready.connect
def _sweep_at_start(sender: Any = None, **_: Any) -> None:
    """A worker that starts may be replacing one that died: sweep now rather than one interval from now."""
    queue_sweep(sender.app if sender is not None else execute_ticket_task.app)
