"""The Celery application. Workers started from it are the executor: the only holders of the write credential."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "phigate.settings")

app = Celery("phigate")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
