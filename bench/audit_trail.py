"""The audit trail at scale: insert rate with chaining, chaining and verifying 1,000,000 events, search p95
over them, and an evidence export of 100,000 events.

Run: ``.venv/bin/python bench/audit_trail.py [--events 1000000]``. It creates its own control-plane database
(``phigate_bench_audit``, dropped at the end unless ``--keep``) on the PostgreSQL at ``BENCH_ADMIN_URL``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``). Prints Markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
ADMIN_URL = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = "phigate_bench_audit"
os.environ["DJANGO_SETTINGS_MODULE"] = "phigate.settings"
os.environ["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(40)
os.environ["DATABASE_URL"] = ADMIN_URL.rsplit("/", 1)[0] + "/" + DB_NAME
os.environ["AUDIT_SIGNING_KEY"] = secrets.token_hex(32)
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ["ALLOWED_HOSTS"] = "testserver"

WORDS = [
    "patients",
    "encounters",
    "prescriptions",
    "diagnosis_codes",
    "ssn",
    "mrn",
    "full_name",
    "email",
    "phone",
    "address",
    "notes",
    "drug",
    "dose",
    "admitted_at",
    "date_of_birth",
    "count",
    "upper",
    "lower",
    "coalesce",
    "inference",
    "masked",
    "held",
    "denied",
]


def create_database() -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


def drop_database() -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")


def bulk_events(count: int, user_id: int) -> float:
    """``count`` varied events spread over the past year, inserted by SQL in chunks (each its own transaction)."""
    started = time.perf_counter()
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        chunk = 100_000
        for offset in range(0, count, chunk):
            conn.execute(
                """
                INSERT INTO audit_auditevent (occurred_at, kind, outcome, actor_id, actor_name, agent_id,
                    agent_name, datasource, ticket_id, front, source_address, session_id, statement, summary,
                    details)
                SELECT now() - make_interval(secs => (%(count)s - g) * 31.0),
                       (%(kinds)s::text[])[1 + g %% 5], (%(outcomes)s::text[])[1 + g %% 5],
                       %(user)s, 'user' || (g %% 50), NULL,
                       CASE WHEN g %% 3 = 0 THEN 'agent' || (g %% 20) ELSE '' END,
                       'clinic', NULL, 'wire', '10.0.0.1', 'wire:' || (g / 40),
                       'SELECT ' || (%(words)s::text[])[1 + g %% %(nwords)s] || ', '
                         || (%(words)s::text[])[1 + (g * 7) %% %(nwords)s]
                         || ' FROM ' || (%(tables)s::text[])[1 + g %% 4] || ' WHERE id = ' || g,
                       (%(summaries)s::text[])[1 + g %% 5],
                       jsonb_build_object(
                         'verdict', (%(verdicts)s::text[])[1 + g %% 5],
                         'relations', jsonb_build_array((%(tables)s::text[])[1 + g %% 4]),
                         'masking', CASE WHEN g %% 5 = 1 THEN jsonb_build_object('ssn', jsonb_build_object(
                            'mask', 'partial', 'phi_type', (%(phi)s::text[])[1 + g %% 7 %% 4]))
                            ELSE '{}'::jsonb END,
                         'phi_types', CASE WHEN g %% 5 = 1
                            THEN jsonb_build_array((%(phi)s::text[])[1 + g %% 7 %% 4]) ELSE '[]'::jsonb END,
                         'rowcount', g %% 100)
                FROM generate_series(%(low)s, %(high)s) g
                """,
                {
                    "count": count,
                    "user": user_id,
                    "words": WORDS,
                    "nwords": len(WORDS),
                    "kinds": ["query.submitted", "query.executed", "auth.succeeded", "query.denied", "ticket.created"],
                    "outcomes": ["success", "success", "success", "denied", "held"],
                    "verdicts": ["allowed", "allowed", "allowed", "denied", "held"],
                    "tables": ["patients", "encounters", "prescriptions", "diagnosis_codes"],
                    "summaries": [
                        "read",
                        "rows returned",
                        "signed in",
                        "denied by policy: COPY PROGRAM",
                        "held for approval: DELETE without WHERE",
                    ],
                    "phi": ["ssn", "email", "phone", "name"],
                    "low": offset + 1,
                    "high": min(offset + chunk, count),
                },
            )
        conn.execute("VACUUM ANALYZE audit_auditevent")
    return time.perf_counter() - started


def sustained_inserts(seconds: float, user) -> str:  # type: ignore[no-untyped-def]
    """The gateway's batch writer (open loop from 8 threads) while a sequencer chains continuously."""
    from django.db import connections

    from audit.batch_writer import AuditBatchWriter
    from audit.chain import extend_chain
    from audit.models import ChainLink, EventKind
    from audit.recorder import event_row
    from identity.principal import Principal

    row = event_row(
        EventKind.QUERY_SUBMITTED,
        principal=Principal(human=user),
        statement="SELECT abalance FROM pgbench_accounts WHERE aid = 1",
        details={"verdict": "allowed", "relations": ["pgbench_accounts"]},
    )
    writer = AuditBatchWriter()
    stop = threading.Event()
    submitted = [0] * 8
    chained_before = ChainLink.objects.count()

    def client(index: int) -> None:
        while not stop.is_set():
            futures = [writer.submit(row) for _ in range(200)]
            for future in futures:
                future.result()
            submitted[index] += len(futures)

    def sequencer() -> None:
        while not stop.is_set():
            extend_chain()
            time.sleep(0.2)
        connections.close_all()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)] + [threading.Thread(target=sequencer)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    catch_up = time.perf_counter()
    extend_chain()
    lag = time.perf_counter() - catch_up
    writer.close()
    chained = ChainLink.objects.count() - chained_before
    total = sum(submitted)
    return (
        f"| batch writer (8 threads, open loop) with a sequencer chaining every 0.2 s | {total / elapsed:,.0f} "
        f"| {total:,} events in {elapsed:.1f} s; {chained:,} chained; the last pass after the writers stopped "
        f"took {lag * 1000:.0f} ms |"
    )


def orm_writers(count_per_thread: int, threads: int, user) -> str:  # type: ignore[no-untyped-def]
    """Audited changes through the ORM (one transaction per event), many writers, with chaining running."""
    from django.db import connections, transaction

    from audit.chain import extend_chain
    from audit.models import EventKind
    from audit.recorder import record
    from identity.principal import Principal

    principal = Principal(human=user)
    stop = threading.Event()

    def writer() -> None:
        for _ in range(count_per_thread):
            with transaction.atomic():
                record(EventKind.TOKEN_ISSUED, principal=principal, summary="bench")
        connections.close_all()

    def sequencer() -> None:
        while not stop.is_set():
            extend_chain()
            time.sleep(0.2)
        connections.close_all()

    workers = [threading.Thread(target=writer) for _ in range(threads)]
    chainer = threading.Thread(target=sequencer)
    started = time.perf_counter()
    chainer.start()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - started
    stop.set()
    chainer.join()
    total = count_per_thread * threads
    return (
        f"| ORM, one transaction per event ({threads} threads) with chaining | {total / elapsed:,.0f} "
        f"| {total:,} events in {elapsed:.1f} s |"
    )


def search_p95(compliance_token: str, rounds: int) -> list[str]:
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {compliance_token}")
    rng = random.Random(7)
    shapes = {
        "full text, one word": lambda: {"q": rng.choice(WORDS)},
        "full text, two words": lambda: {"q": f"{rng.choice(WORDS)} {rng.choice(WORDS)}"},
        "full text, a rare literal": lambda: {"q": str(rng.randint(1, 1_000_000))},
        "person + time range": lambda: {
            "actor": f"user{rng.randint(0, 49)}",
            "since": "2026-06-01",
            "until": "2026-07-01",
        },
        "agent + decision": lambda: {"agent": f"agent{rng.randint(0, 19)}", "decision": rng.choice(["held", "denied"])},
        "table + PHI type": lambda: {"table": "encounters", "phi_type": rng.choice(["ssn", "email", "phone", "name"])},
        "full text + person + table": lambda: {
            "q": rng.choice(WORDS),
            "actor": f"user{rng.randint(0, 49)}",
            "table": "patients",
        },
    }
    rows = []
    everything: list[float] = []
    for label, make in shapes.items():
        samples = []
        for _ in range(rounds):
            params = make()
            started = time.perf_counter()
            response = client.get("/api/v1/audit/events", params)
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.content
        samples.sort()
        everything.extend(samples)
        p95 = samples[int(len(samples) * 0.95) - 1]
        rows.append(f"| {label} | {statistics.median(samples):.1f} | {p95:.1f} | {samples[-1]:.1f} |")
    everything.sort()
    rows.append(
        f"| **all searches** | {statistics.median(everything):.1f} | {everything[int(len(everything) * 0.95) - 1]:.1f} "
        f"| {everything[-1]:.1f} |"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    create_database()
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.utils import timezone

    call_command("migrate", verbosity=0)
    try:
        from audit.chain import extend_chain, verify_chain
        from audit.evidence import ExportFilters, export_evidence
        from identity.models import ApiToken
        from identity.roles import Role, grant_role

        user = get_user_model().objects.create(username="bench-officer")
        grant_role(user, Role.COMPLIANCE)
        token = ApiToken.issue(user=user)[1]

        print("### Insert rate with chaining\n")
        print("| writers | events/s | notes |\n| --- | --- | --- |")
        print(sustained_inserts(args.seconds, user))
        print(orm_writers(400, 16, user))

        print(f"\n### {args.events:,} events\n")
        generated = bulk_events(args.events, user.pk)
        started = time.perf_counter()
        chained = extend_chain()
        chaining = time.perf_counter() - started
        started = time.perf_counter()
        verdict = verify_chain()
        verifying = time.perf_counter() - started
        assert verdict.ok, verdict.problem
        print("| step | seconds | rate |\n| --- | --- | --- |")
        print(f"| generate {args.events:,} events (SQL, for the benchmark) | {generated:.1f} | |")
        print(f"| chain them (one sequencer pass) | {chaining:.1f} | {chained / chaining:,.0f} events/s |")
        print(
            f"| `verify_audit` over the whole chain ({verdict.links:,} links) | {verifying:.1f} | "
            f"{verdict.links / verifying:,.0f} events/s |"
        )

        print("\n### Search over the same events (`GET /api/v1/audit/events`, first page of 100, in-process)\n")
        print("| search | median ms | p95 ms | max ms |\n| --- | --- | --- | --- |")
        for line in search_p95(token, 40):
            print(line)

        print("\n### Evidence export\n")
        now = timezone.now()
        span = timedelta(seconds=31 * 100_000)  # the generator spaces events 31 s apart
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "bundle.zip"
            started = time.perf_counter()
            result = export_evidence(
                ExportFilters(since=now - span - timedelta(days=30), until=now - timedelta(days=30)),
                out,
                requested_by=None,
            )
            exporting = time.perf_counter() - started
            size = out.stat().st_size
            from audit.verify import verify_bundle

            started = time.perf_counter()
            verify_bundle(str(out))
            offline = time.perf_counter() - started
        print("| step | events | seconds | bundle |\n| --- | --- | --- | --- |")
        print(
            f"| `export_evidence` | {result.events:,} | {exporting:.1f} | {size / 1e6:.1f} MB, {result.links:,} links |"
        )
        print(f"| `python -m audit.verify` on it | {result.events:,} | {offline:.1f} | |")
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_database()


if __name__ == "__main__":
    main()
