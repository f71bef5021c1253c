"""A soak of the wire gateway: mixed traffic for N minutes, its memory sampled, every error counted (issue 15).

Run: ``make soak [MINUTES=10]``, i.e. ``.venv/bin/python bench/soak.py --minutes 10``, on a machine with PostgreSQL on
127.0.0.1:5432 (trust auth for ``postgres``; ``SOAK_ADMIN_URL`` to change) and ``redis-server`` on PATH (a private
one is started on a free port). It creates its own control-plane and target databases and roles (dropped at the
end unless ``--keep``), starts a real gateway with its audit journal, runs the chain's sequencer every 5 s as the
executor's beat would, and drives at once:

* readers: persistent psycopg sessions, simple and extended protocol and named prepared statements, over reads
  with varying literals (masked PHI columns, joins, aggregates, a 200-row masked page);
* asyncpg: a persistent session with its prepared-statement cache;
* churn: sessions that sign in, run one to three statements and close;
* held statements: a DELETE that becomes a ticket (answered HA001 at once), and one held with
  ``-c gateway.approval=wait`` whose client cancels it (the ticket is cancelled, the statement answered 57014);
* strangers: sign-ins with a made-up name, twice a second, refused with 28P01.

The gateway's RSS is sampled with psutil every ``--sample-seconds``. The report (Markdown, for
docs/benchmarks.md) gives statements and sessions, errors (anything but the expected answers), and RSS after the
warm-up against the end, with the slope over the rest of the run. Exit 1 on any error, on a gateway that died, on
an audit chain that does not verify, or when memory grew past ``--max-growth-mb`` after the warm-up.

``--objects DIR`` counts the gateway's live objects by type at the end of the warm-up and at the end (a watcher
thread in the gateway, no slowdown) and prints the types that grew; ``--tracemalloc DIR`` adds tracemalloc
snapshots (25 frames; the gateway then runs some 20 times slower) and the allocation sites that grew;
``--compare DIR`` prints that again. What to look at when the memory does not level off. Not part of
``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
ADMIN = os.environ.get("SOAK_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres").rsplit("/", 1)[0]
RUN = f"soak_{os.getpid()}"
CONTROL_DB, TARGET_DB = f"{RUN}_cp", f"{RUN}_clinic"
READ_ROLE, WRITE_ROLE = f"{RUN}_reader", f"{RUN}_writer"
DATASOURCE = "clinic"
SNAPSHOT_REQUEST = "request-snapshot"

# (name, SQL with %s for one integer, how the id is drawn). All are allowed reads under the demo's policy.
READS: tuple[tuple[str, str], ...] = (
    ("prescription by id", "SELECT id, drug, dose FROM prescriptions WHERE id = %s"),
    ("patient by id (masked)", "SELECT id, mrn, full_name, date_of_birth, phone FROM patients WHERE id = %s"),
    ("encounters of a patient", "SELECT id, admitted_at, diagnosis_code FROM encounters WHERE patient_id = %s"),
    (
        "join of three tables",
        "SELECT p.full_name, e.admitted_at, rx.drug, rx.dose FROM patients p JOIN encounters e ON e.patient_id = p.id "
        "JOIN prescriptions rx ON rx.encounter_id = e.id WHERE p.id = %s",
    ),
    ("aggregate", "SELECT drug, count(*) FROM prescriptions WHERE encounter_id > %s GROUP BY drug ORDER BY drug"),
    ("200-row masked page", "SELECT id, full_name, email, address FROM patients WHERE id > %s ORDER BY id LIMIT 200"),
)
ASYNCPG_READ = "SELECT id, drug, dose FROM prescriptions WHERE encounter_id = $1"
HELD = "DELETE FROM scratch WHERE id = %s"


def _psql(sql: str, db: str = "postgres") -> None:
    subprocess.run(["psql", f"{ADMIN}/{db}", "-qAtX", "-c", sql], check=True, capture_output=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the process meant to listen on {port} exited ({process.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port}")


# --------------------------------------------------------------------------------------------------------------
# The gateway under tracemalloc (``soak.py _gateway DIR ARGS...``, started by --tracemalloc)
# --------------------------------------------------------------------------------------------------------------


def _gateway_under_watch(folder: Path, argv: list[str]) -> None:
    """Run ``manage.py gateway`` with a watcher thread: whenever DIR/request-snapshot appears, it writes the count
    of live objects by type (DIR/<name>.objects.json) and, with SOAK_TRACEMALLOC=1, a tracemalloc snapshot
    (DIR/<name>.tracemalloc), then removes the request. The gateway's event loop is left alone."""
    import gc
    import json
    import tracemalloc

    tracing = os.environ.get("SOAK_TRACEMALLOC") == "1"
    if tracing:
        tracemalloc.start(25)

    def watch() -> None:
        request = folder / SNAPSHOT_REQUEST
        while True:
            time.sleep(0.5)
            if request.exists():
                name = request.read_text().strip() or "snapshot"
                gc.collect()
                counts = Counter(type(item).__qualname__ for item in gc.get_objects())
                (folder / f"{name}.objects.json").write_text(json.dumps(counts))
                if tracing:
                    tracemalloc.take_snapshot().dump(str(folder / f"{name}.tracemalloc"))
                request.unlink()

    threading.Thread(target=watch, name="soak-tracemalloc", daemon=True).start()
    from django.core.management import execute_from_command_line

    execute_from_command_line(["manage.py", "gateway", *argv])


def _request_snapshot(folder: Path, name: str, timeout: float = 120) -> None:
    (folder / SNAPSHOT_REQUEST).write_text(name)
    deadline = time.monotonic() + timeout
    while (folder / SNAPSHOT_REQUEST).exists() and time.monotonic() < deadline:
        time.sleep(0.5)


def compare_snapshots(folder: Path, top: int = 25) -> str:
    """The live object types that grew most between the end of the warm-up and the end, and with tracemalloc the
    allocation sites."""
    import json

    before = Counter(json.loads((folder / "warm.objects.json").read_text()))
    after = Counter(json.loads((folder / "end.objects.json").read_text()))
    growth = sorted(((after[name] - before[name], name) for name in after | before), reverse=True)[:top]
    lines = [f"live objects by type, end of the warm-up -> end (top {top} growth):"]
    lines.extend(f"  {diff:+8d}  {name} ({after[name]:,})" for diff, name in growth if diff)
    if (folder / "end.tracemalloc").exists():
        import tracemalloc

        early = tracemalloc.Snapshot.load(str(folder / "warm.tracemalloc"))
        late = tracemalloc.Snapshot.load(str(folder / "end.tracemalloc"))
        lines.append(f"top {top} allocation growth (traceback frames, newest last):")
        for stat in late.compare_to(early, "traceback")[:top]:
            lines.append(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
            lines.extend(f"        {frame.filename}:{frame.lineno}" for frame in stat.traceback[-6:])
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------------------------


def setup(env: dict[str, str], patients: int) -> tuple[str, list[str]]:
    """Databases, migrations, the clinic, roles, policy and three agents. Returns (read URL, agent DSN prefixes)."""
    os.environ.update(env)
    import django

    django.setup()
    import psycopg
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from demo.clinic import CLINIC_TABLES, PHI_TAGS, load_clinic
    from identity.models import Agent
    from identity.roles import Role, grant_role
    from policy.models import ClassificationSource, ClassifiedRelation, DataSource, PhiColumn
    from policy.provisioning import provision

    call_command("migrate", verbosity=0)
    with psycopg.connect(f"{ADMIN}/{TARGET_DB}") as conn:
        load_clinic(conn, patients=patients)
        conn.execute("CREATE TABLE scratch (id int PRIMARY KEY, label text)")
        conn.execute("INSERT INTO scratch SELECT g, 'row ' || g FROM generate_series(1, 50) g")
        conn.commit()
    urls = provision(f"{ADMIN}/{TARGET_DB}", read_role=READ_ROLE, write_role=WRITE_ROLE, transfer_ownership=True)
    datasource, _ = DataSource.objects.get_or_create(name=DATASOURCE)
    for tag in PHI_TAGS:
        PhiColumn.objects.update_or_create(
            datasource=datasource,
            schema_name="public",
            table_name=tag.table,
            column_name=tag.column,
            defaults={"phi_type": tag.phi_type},
        )
    for table in (*CLINIC_TABLES, "scratch"):
        ClassifiedRelation.objects.get_or_create(
            datasource=datasource, schema_name="public", table_name=table, defaults={"how": ClassificationSource.SEED}
        )
    prefixes = []
    for n in range(3):
        owner = get_user_model().objects.create_user(username=f"soak-owner-{n}")
        grant_role(owner, Role.ENGINEER)
        agent, token = Agent.issue(owner=owner, name=f"soak-agent-{n}")
        prefixes.append(f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1")
    return urls.read_url, prefixes


# --------------------------------------------------------------------------------------------------------------
# Traffic
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw. Expected refusals (a held statement's HA001, a cancelled wait's 57014) are counted
    apart from errors."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statements: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    over: bool = False

    def ok(self, kind: str) -> None:
        with self.lock:
            self.statements[kind] += 1

    def session(self) -> None:
        with self.lock:
            self.sessions += 1

    def error(self, where: str, exc: BaseException) -> None:
        code = getattr(exc, "sqlstate", None) or type(exc).__name__
        with self.lock:
            if self.over:
                return  # the run is over: the gateway is being stopped under a client still finishing
            self.errors[f"{where}: {code}"] += 1
            if len(self.first_errors) < 10:
                self.first_errors.append(f"{where}: {code}: {str(exc).strip()[:300]}")


class Traffic:
    def __init__(self, prefixes: list[str], port: int, patients: int, tally: Tally, stop: threading.Event) -> None:
        self.prefixes, self.port, self.patients, self.tally, self.stop = prefixes, port, patients, tally, stop

    def dsn(self, n: int, options: str = "") -> str:
        dsn = f"{self.prefixes[n % len(self.prefixes)]}:{self.port}/{DATASOURCE}?connect_timeout=30"
        return dsn + (f"&options={quote(options)}" if options else "")

    def _connect(self, n: int, options: str = "") -> Any:
        import psycopg

        conn = psycopg.connect(self.dsn(n, options), autocommit=True)
        self.tally.session()
        return conn

    def _one_read(self, conn: Any, rng: random.Random, mode: str) -> None:
        import psycopg

        _name, sql = rng.choice(READS)
        value = rng.randint(1, self.patients)
        if mode == "simple":
            with psycopg.ClientCursor(conn) as cursor:  # literals bound client-side: the simple query protocol
                cursor.execute(sql, (value,))
                cursor.fetchall()
        else:
            conn.execute(sql, (value,), prepare=mode == "prepared").fetchall()
        self.tally.ok(f"read ({mode})")

    def reader(self, n: int) -> None:
        """A persistent session; reconnects after an error (which is counted)."""
        rng = random.Random(n)
        modes = ("simple", "extended", "prepared")
        while not self.stop.is_set():
            try:
                with self._connect(n) as conn:
                    while not self.stop.is_set():
                        self._one_read(conn, rng, modes[rng.randrange(3)])
            except Exception as exc:
                self.tally.error("reader", exc)
                self.stop.wait(1)

    def churn(self, n: int) -> None:
        rng = random.Random(1000 + n)
        while not self.stop.is_set():
            try:
                with self._connect(n) as conn:
                    for _ in range(rng.randint(1, 3)):
                        self._one_read(conn, rng, rng.choice(("simple", "extended")))
            except Exception as exc:
                self.tally.error("churn", exc)
                self.stop.wait(1)
            self.stop.wait(0.05)

    def asyncpg_client(self, n: int) -> None:
        import asyncpg

        async def run() -> None:
            rng = random.Random(2000 + n)
            while not self.stop.is_set():
                try:
                    conn = await asyncpg.connect(self.dsn(n).split("?")[0], timeout=30)
                    self.tally.session()
                    try:
                        while not self.stop.is_set():
                            await conn.fetch(ASYNCPG_READ, rng.randint(1, self.patients))
                            self.tally.ok("read (asyncpg prepared)")
                    finally:
                        await conn.close()
                except Exception as exc:
                    self.tally.error("asyncpg", exc)
                    await asyncio.sleep(1)

        asyncio.run(run())

    def held(self, n: int) -> None:
        """A statement that becomes a ticket every couple of seconds; every third one waits and is cancelled."""
        import psycopg

        rng = random.Random(3000 + n)
        count = 0
        while not self.stop.is_set():
            count += 1
            waits = count % 3 == 0
            try:
                with self._connect(n, "-c gateway.approval=wait" if waits else "") as conn:
                    if waits:
                        threading.Timer(1.0, conn.cancel).start()
                    try:
                        conn.execute(HELD, (rng.randint(1, 50),))
                    except psycopg.Error as exc:
                        expected = "57014" if waits else "HA001"
                        if exc.sqlstate != expected:
                            raise
                        self.tally.ok("held, cancelled while waiting" if waits else "held (ticket)")
                    else:
                        raise RuntimeError("a held statement ran")
            except Exception as exc:
                self.tally.error("held", exc)
            self.stop.wait(2)

    def stranger(self, n: int) -> None:
        """Sign-ins that fail, as a scanner's would: a new made-up name each time, refused with 28P01."""
        import psycopg

        count = 0
        while not self.stop.is_set():
            count += 1
            dsn = f"postgresql://soak-stranger-{n}-{count}:wrong@127.0.0.1:{self.port}/{DATASOURCE}?connect_timeout=30"
            try:
                psycopg.connect(dsn).close()
            except psycopg.OperationalError as exc:
                if "password authentication failed" not in str(exc):
                    self.tally.error("stranger", exc)
                else:
                    self.tally.ok("failed sign-in (28P01)")
            except Exception as exc:
                self.tally.error("stranger", exc)
            else:
                self.tally.error("stranger", RuntimeError("a made-up name signed in"))
            self.stop.wait(0.5)


def sequencer(stop: threading.Event, tally: Tally) -> None:
    """The executor's beat: chain the audit trail every 5 s."""
    from django.db import connections

    from audit.chain import extend_chain

    while not stop.wait(5):
        try:
            extend_chain()
        except Exception as exc:
            tally.error("sequencer", exc)
    connections.close_all()


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    rss: int
    statements: int


def slope_mb_per_minute(samples: list[Sample]) -> float:
    if len(samples) < 2:
        return 0.0
    xs = [s.seconds / 60 for s in samples]
    ys = [s.rss / 2**20 for s in samples]
    return float(statistics.linear_regression(xs, ys).slope)


def run(args: argparse.Namespace) -> int:
    import psutil

    work = Path(tempfile.mkdtemp(prefix="phigate-soak-"))
    started_processes: list[subprocess.Popen[bytes]] = []
    redis_port, gateway_port = _free_port(), _free_port()
    try:
        redis = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started_processes.append(redis)
        _wait_port(redis_port, redis)
        for name in (CONTROL_DB, TARGET_DB):
            _psql(f'CREATE DATABASE "{name}"')
        env = {
            "DJANGO_SETTINGS_MODULE": "phigate.settings",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
            "DATABASE_URL": f"{ADMIN}/{CONTROL_DB}",
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "PSEUDONYM_KEY": secrets.token_hex(32),
            "PATIENT_PSEUDONYM_KEY": secrets.token_hex(32),
            "AUDIT_SIGNING_KEY": secrets.token_hex(32),
            "LOG_LEVEL": "WARNING",
            "ALLOWED_HOSTS": "127.0.0.1",
        }
        read_url, prefixes = setup(env, args.patients)
        gateway_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DATASOURCE_")},
            **env,
            f"DATASOURCE_{DATASOURCE.upper()}_READ_URL": read_url,
            "AUDIT_JOURNAL_DIR": str(work / "journal"),
        }
        gateway_args = ["--host", "127.0.0.1", "--port", str(gateway_port)]
        watch = args.objects or args.tracemalloc
        if watch:
            Path(watch).mkdir(parents=True, exist_ok=True)
            gateway_env["SOAK_TRACEMALLOC"] = "1" if args.tracemalloc else ""
            argv = [sys.executable, str(Path(__file__).resolve()), "_gateway", watch, *gateway_args]
        else:
            argv = [sys.executable, "manage.py", "gateway", *gateway_args]
        gateway_log = open(work / "gateway.log", "wb")  # noqa: SIM115 - open for the child's lifetime
        gateway = subprocess.Popen(argv, cwd=REPO, env=gateway_env, stdout=gateway_log, stderr=subprocess.STDOUT)
        started_processes.append(gateway)
        _wait_port(gateway_port, gateway, timeout=600 if args.tracemalloc else 60)
        process = psutil.Process(gateway.pid)

        tally, stop = Tally(), threading.Event()
        traffic = Traffic(prefixes, gateway_port, args.patients, tally, stop)
        workers = [threading.Thread(target=traffic.reader, args=(n,), daemon=True) for n in range(args.readers)]
        workers += [threading.Thread(target=traffic.churn, args=(n,), daemon=True) for n in range(args.churn)]
        workers += [threading.Thread(target=traffic.asyncpg_client, args=(0,), daemon=True)]
        workers += [threading.Thread(target=traffic.held, args=(n,), daemon=True) for n in range(args.held)]
        workers += [threading.Thread(target=traffic.stranger, args=(n,), daemon=True) for n in range(args.strangers)]
        workers += [threading.Thread(target=sequencer, args=(stop, tally), daemon=True)]
        begin = time.monotonic()
        for worker in workers:
            worker.start()
        duration, warmup = args.minutes * 60, args.warmup_minutes * 60
        samples: list[Sample] = []
        snapped_warm = False
        print(f"soak: {args.minutes:g} min ({args.warmup_minutes:g} warm-up), gateway pid {gateway.pid}", flush=True)
        while (elapsed := time.monotonic() - begin) < duration:
            if gateway.poll() is not None:
                tally.error("gateway", RuntimeError(f"exited with {gateway.returncode}"))
                break
            with tally.lock:
                done = sum(tally.statements.values())
            samples.append(Sample(elapsed, process.memory_info().rss, done))
            if watch and not snapped_warm and elapsed >= warmup:
                _request_snapshot(Path(watch), "warm")
                snapped_warm = True
            if len(samples) % max(1, int(60 / args.sample_seconds)) == 0:
                print(
                    f"  {elapsed / 60:5.1f} min  RSS {samples[-1].rss / 2**20:7.1f} MiB  {done:,} statements  "
                    f"{sum(tally.errors.values())} errors",
                    flush=True,
                )
            time.sleep(args.sample_seconds)
        alive = gateway.poll() is None
        if alive:
            samples.append(Sample(time.monotonic() - begin, process.memory_info().rss, sum(tally.statements.values())))
            if watch:
                _request_snapshot(Path(watch), "end")
        stop.set()
        for worker in workers:
            worker.join(20)
        with tally.lock:
            tally.over = True
        elapsed = time.monotonic() - begin
        verified = verify_audit(gateway) if alive else "not checked: the gateway died"
        code = report(args, tally, samples, elapsed, warmup, alive, verified)
        if code:
            logged = (work / "gateway.log").read_text(errors="replace").splitlines()
            noted = [line for line in logged if " WARNING " in line or " ERROR " in line or "Traceback" in line]
            print("\ngateway log, last warnings and errors:\n" + "\n".join(f"  {line}" for line in noted[-20:]))
        return code
    finally:
        for child in reversed(started_processes):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(10)
        if args.keep:
            print(f"kept: {work}, databases {CONTROL_DB} and {TARGET_DB}")
        else:
            try:
                from django.db import connections

                connections.close_all()
            except Exception:  # Django was never set up
                pass
            for name in (CONTROL_DB, TARGET_DB):
                _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for role in (READ_ROLE, WRITE_ROLE):
                _psql(f'DROP ROLE IF EXISTS "{role}"')
            shutil.rmtree(work, ignore_errors=True)


def verify_audit(gateway: subprocess.Popen[bytes]) -> str:
    """Stop the gateway (its journal ships what is left), chain everything, verify."""
    from audit.chain import extend_chain, verify_chain
    from audit.models import AuditEvent, EventKind

    gateway.send_signal(signal.SIGTERM)
    gateway.wait(60)
    extend_chain()
    verdict = verify_chain()
    submitted = AuditEvent.objects.filter(kind=EventKind.QUERY_SUBMITTED, front="wire").count()
    if not verdict.ok:
        return f"FAILED: {verdict.problem}"
    return f"OK: {verdict.links:,} events chained and verified ({submitted:,} wire statements recorded)"


def report(
    args: argparse.Namespace,
    tally: Tally,
    samples: list[Sample],
    elapsed: float,
    warmup: float,
    alive: bool,
    verified: str,
) -> int:
    after = [s for s in samples if s.seconds >= warmup]
    first, last = samples[0], samples[-1]
    warm = after[0] if after else last
    growth = (last.rss - warm.rss) / 2**20
    second_half = [s for s in after if s.seconds >= (warm.seconds + last.seconds) / 2]
    total = sum(tally.statements.values())
    errors = sum(tally.errors.values())
    print(f"\n### Soak, {args.minutes:g} minutes (`bench/soak.py`, {time.strftime('%Y-%m-%d')})\n")
    print(
        f"{args.readers} persistent psycopg readers (simple, extended, prepared), 1 asyncpg session, {args.churn} "
        f"churning sessions, {args.held} held-statement client(s), {args.strangers} client(s) failing to sign in; "
        f"chain sequencer every 5 s; {args.patients:,} patients.\n"
    )
    print("| traffic | count |\n| --- | --- |")
    for kind, count in sorted(tally.statements.items()):
        print(f"| {kind} | {count:,} |")
    print(f"| **statements** | {total:,} ({total / elapsed:,.0f}/s) |")
    print(f"| sessions opened | {tally.sessions:,} |")
    print(f"| errors | {errors} |")
    print("\n| gateway RSS | MiB |\n| --- | --- |")
    print(f"| at start (after sign-in of the first sessions) | {first.rss / 2**20:.1f} |")
    print(f"| after the warm-up ({warmup / 60:g} min) | {warm.rss / 2**20:.1f} |")
    print(f"| at the end | {last.rss / 2**20:.1f} |")
    print(f"| highest | {max(s.rss for s in samples) / 2**20:.1f} |")
    print(f"| growth after the warm-up | {growth:+.1f} |")
    print(
        f"| slope after the warm-up / over its second half | {slope_mb_per_minute(after):+.2f} / "
        f"{slope_mb_per_minute(second_half):+.2f} MiB/min |"
    )
    print(f"\naudit chain: {verified}")
    if tally.first_errors:
        print("\nfirst errors:\n" + "\n".join(f"  {line}" for line in tally.first_errors))
        print("errors by kind: " + ", ".join(f"{kind} x{count}" for kind, count in tally.errors.most_common()))
    if (args.objects or args.tracemalloc) and alive:
        print("\n" + compare_snapshots(Path(args.objects or args.tracemalloc)))
    flat = growth <= args.max_growth_mb
    verdict = "memory flat" if flat else "memory GREW"
    print(
        f"\nverdict: {verdict} after the warm-up (limit {args.max_growth_mb:g} MiB), {errors} errors, "
        f"gateway {'alive' if alive else 'DIED'}"
    )
    return 0 if flat and not errors and alive and verified.startswith("OK") else 1


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_gateway":
        os.chdir(REPO)
        _gateway_under_watch(Path(sys.argv[2]), sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=None, help="default: a fifth of the run, at most 2")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--churn", type=int, default=2)
    parser.add_argument("--held", type=int, default=1)
    parser.add_argument("--strangers", type=int, default=1, help="clients signing in with made-up names, 2/s each")
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--max-growth-mb", type=float, default=5.0, help="RSS growth after the warm-up that fails")
    parser.add_argument("--objects", metavar="DIR", help="count the gateway's live objects by type, into DIR")
    parser.add_argument("--tracemalloc", metavar="DIR", help="that, and tracemalloc snapshots (slow: ~20x)")
    parser.add_argument("--compare", metavar="DIR", help="only print the growth between DIR's two snapshots")
    parser.add_argument("--keep", action="store_true", help="keep the databases and the work directory")
    args = parser.parse_args()
    if args.compare:
        print(compare_snapshots(Path(args.compare)))
        return 0
    if args.warmup_minutes is None:
        args.warmup_minutes = min(2.0, args.minutes / 5)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
