"""The Celery application. Workers started from it are the executor: the only holders of the write credential."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "phigate.settings")

app = Celery("phigate")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Every worker queues the execution sweep from its own timer (approvals.tasks.ExecutionSweepTimer): approvals
# whose enqueue was lost and tickets whose executor died are found without Celery beat. Named, not imported:
# the step is loaded once Django is set up.
app.steps["worker"].add("approvals.tasks:ExecutionSweepTimer")
