"""The audit batch writer alone: closed loop (8 threads waiting for their own events) and open loop.

Run: ``DATABASE_URL=postgresql://postgres@127.0.0.1:5432/<migrated control-plane db> .venv/bin/python
bench/audit_writer.py`` (``AUDIT_WRITERS`` selects the number of writer connections).
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "phigate.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(40))

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402

from audit.batch_writer import AuditBatchWriter  # noqa: E402
from audit.models import EventKind  # noqa: E402
from audit.recorder import event_row  # noqa: E402
from identity.principal import Principal  # noqa: E402

CLIENTS, CLOSED_EVENTS, OPEN_EVENTS = 8, 2000, 20000


def main() -> None:
    user, _ = get_user_model().objects.get_or_create(username="audit-writer-bench")
    row = event_row(EventKind.QUERY_SUBMITTED, principal=Principal(human=user), statement="SELECT 1", details={"a": 1})
    writer = AuditBatchWriter()

    def client() -> None:
        for _ in range(CLOSED_EVENTS // CLIENTS):
            writer.submit(row).result()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    print(
        f"closed loop, {CLIENTS} clients: {CLOSED_EVENTS / elapsed:,.0f} events/s, {writer.batches} batches "
        f"(average {writer.events / writer.batches:.1f} events, {elapsed / writer.batches * 1000:.2f} ms each)"
    )
    started = time.perf_counter()
    futures = [writer.submit(row) for _ in range(OPEN_EVENTS)]
    for future in futures:
        future.result()
    print(f"open loop: {OPEN_EVENTS / (time.perf_counter() - started):,.0f} events/s")
    writer.close()


if __name__ == "__main__":
    main()
