"""The test run's identity: unique database and role names, and the environment every process shares.

Imported by conftest before Django is set up. Each run gets its own control-plane and target databases (and
Redis database), so a run never sees another run's data, nor a running demo's.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from pathlib import Path

RUN_ID = f"{os.getpid()}"
ADMIN_URL = os.environ.get("TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CONTROL_DB = f"phigate_test_{RUN_ID}"
TARGET_DB = f"clinic_test_{RUN_ID}"
DATASOURCE = "clinic"
READ_ROLE = f"test_reader_{RUN_ID}"
WRITE_ROLE = f"test_writer_{RUN_ID}"


def _redis_url_of_this_process(base: str) -> str:
    """The run's Redis database; under pytest-xdist each worker runs its own services, so worker N takes the
    database N after the given one (modulo Redis's 16): two workers' Celery queues and RPC lists never mix."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return base
    head, _, index = base.rpartition("/")
    return f"{head}/{(int(index or 0) + int(worker[2:])) % 16}"


REDIS_URL = _redis_url_of_this_process(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13"))
# The local receiver that plays Slack's Web API (tests/test_slack.py) listens here; the worker and gateway are
# started with SLACK_API_URL pointing at it, so the port is fixed once per run.
with socket.socket() as _probe:
    _probe.bind(("127.0.0.1", 0))
    SLACK_RECEIVER_PORT = int(_probe.getsockname()[1])


def db_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


COMMON_ENV = {
    "DJANGO_SETTINGS_MODULE": "phigate.settings",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
    "DATABASE_URL": db_url(CONTROL_DB),
    "REDIS_URL": REDIS_URL,
    "PSEUDONYM_KEY": secrets.token_hex(32),
    "PATIENT_PSEUDONYM_KEY": secrets.token_hex(32),
    "AUDIT_SIGNING_KEY": secrets.token_hex(32),  # any 32 bytes are an Ed25519 seed
    "EVIDENCE_DIR": str(Path(tempfile.gettempdir()) / f"phigate-evidence-{RUN_ID}"),
    "LOCAL_LOGIN": "True",
    "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
    "PUBLIC_URL": "http://testserver",
    "CATALOG_TTL_SECONDS": "1",
    "LOG_LEVEL": "WARNING",
    "SLACK_BOT_TOKEN": "xoxb-test-" + secrets.token_hex(12),
    "SLACK_SIGNING_SECRET": secrets.token_hex(16),
    "SLACK_TEAM_ID": "T0TEST",
    "SLACK_API_URL": f"http://127.0.0.1:{SLACK_RECEIVER_PORT}/api/",
}


def install() -> None:
    for key, value in COMMON_ENV.items():
        os.environ[key] = value
    # The test process plays the web process: it must hold no target credential.
    for key in [k for k in os.environ if k.startswith("DATASOURCE_")]:
        del os.environ[key]
