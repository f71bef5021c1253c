"""pgbench -S through several paths in one run: direct PostgreSQL, pgbouncer, two floors, and the phigate gateway.

The floors (``bench/floor_proxy.py``) are a bare Python byte-copying proxy, and the same proxy holding every answer
until an fsync covers a record of its request: what any Python gateway with durable audit costs here, at least.

Run: ``.venv/bin/python bench/wire_pgbench.py [--seconds 10] [--scale 10] [--phi] [--read-rows 10000]`` on a
machine with PostgreSQL on 127.0.0.1:5432 (trust auth for ``postgres``), Redis, pgbench and pgbouncer. When
pgbouncer is missing the script installs it (``apt-get install -y pgbouncer``, through ``sudo -n`` when not root);
where that cannot work, install it by hand or leave it out with ``--paths``.

The gateway, direct PostgreSQL and ``floor: proxy + fsync`` run in every ``--modes`` (pgbench ``-M simple``,
``-M extended``, ``-M prepared`` by default); pgbouncer (transaction pooling: no named prepared statements before
1.21) and ``floor: proxy`` run in the first mode only. ``--phi`` adds the one-row masked read of ``patients`` and a
masked read of ``--read-rows`` rows of ``patients`` (every column) with psycopg, gateway against direct.
Auditing is on for the gateway, as in production: every statement's audit record commits before its rows leave.
Prints Markdown tables for docs/benchmarks.md and the issue's targets. Creates and drops its own databases.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ADMIN = "postgresql://postgres@127.0.0.1:5432"
RUN = f"bench_{os.getpid()}"
CONTROL_DB, TARGET_DB = f"{RUN}_cp", f"{RUN}_target"
READ_ROLE, WRITE_ROLE = f"{RUN}_reader", f"{RUN}_writer"
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def psql(sql: str, db: str = "postgres") -> None:
    subprocess.run(["psql", f"{ADMIN}/{db}", "-qAtX", "-c", sql], check=True, capture_output=True)


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port}")


def setup_control_plane(env: dict[str, str]) -> tuple[str, str]:
    """Migrate, provision the target, create an agent. Returns (read_url, agent DSN user:token part)."""
    os.environ.update(env)
    import django

    django.setup()
    import psycopg
    from django.core.management import call_command

    from identity.models import Agent
    from identity.roles import Role, grant_role
    from policy.models import ClassificationSource, ClassifiedRelation, DataSource
    from policy.provisioning import provision

    call_command("migrate", verbosity=0)
    urls = provision(f"{ADMIN}/{TARGET_DB}", read_role=READ_ROLE, write_role=WRITE_ROLE)
    datasource, _ = DataSource.objects.get_or_create(name="bench")
    # Every table the bench created (pgbench's, and with --phi the clinic's) is classified: agents may read them.
    with psycopg.connect(f"{ADMIN}/{TARGET_DB}") as conn:
        tables = [str(name) for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    for table in tables:
        ClassifiedRelation.objects.get_or_create(
            datasource=datasource, schema_name="public", table_name=table, defaults={"how": ClassificationSource.SEED}
        )
    from django.contrib.auth import get_user_model

    owner = get_user_model().objects.create_user(username="bench-owner")
    grant_role(owner, Role.ENGINEER)
    agent, token = Agent.issue(owner=owner, name="bench-agent")
    return urls.read_url, f"{agent.name}:{token}"


PHI_SCRIPT = (
    "\\set id random(1, 10000)\nSELECT id, full_name, ssn, date_of_birth, phone FROM patients WHERE id = :id;\n"
)
CLINIC_PATIENTS = 10_000
FSYNC_FLOOR = "floor: proxy + fsync"
PATHS = ("direct", "pgbouncer", "floor: proxy", FSYNC_FLOOR, "gateway")
EVERY_MODE = ("direct", FSYNC_FLOOR, "gateway")  # the paths measured in each --modes; the others in the first only
TARGET_ADDED_US = 75  # 1 client: the gateway adds at most this much mean latency over `floor: proxy + fsync`
TARGET_FLOOR_TPS = 0.7  # 8 clients: the gateway keeps at least this share of that floor's TPS
TARGET_MODE_RATIO = 1.2  # extended and prepared: mean latency at most this multiple of simple's
TARGET_READ_RATIO = 5.0  # the masked many-row read: at most this multiple of direct PostgreSQL's time


@dataclass
class Run:
    """One pgbench run: its numbers, or what pgbench printed when it failed."""

    transactions: int = 0
    tps: float = 0.0
    mean_ms: float = 0.0
    p99_ms: float = 0.0
    error: str = ""


@dataclass
class Reads:
    """Timed many-row reads on one connection: seconds per read and the warm-up's rows, or the error."""

    times: list[float] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    error: str = ""


def ensure_pgbouncer() -> str:
    """pgbouncer's path; installs the Debian package when it is missing (as root, or through sudo -n)."""
    for found in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):
        if found and os.access(found, os.X_OK):
            return found
    install = ["apt-get", "install", "-y", "--no-install-recommends", "pgbouncer"]
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise SystemExit(
                "pgbouncer is not installed and this user cannot install it: run `apt-get install -y pgbouncer` "
                "as root (Debian/Ubuntu; `brew install pgbouncer` on macOS), or leave it out with "
                "--paths direct,'floor: proxy','floor: proxy + fsync',gateway"
            )
        install = ["sudo", "-n", *install]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"pgbouncer not found; installing: {' '.join(install)}", flush=True)
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:  # stale package lists: refresh once and retry
        update = [*install[: install.index("apt-get")], "apt-get", "update"]
        subprocess.run(update, capture_output=True, text=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    for found in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):
        if found and os.access(found, os.X_OK):
            return found
    raise SystemExit(
        f"could not install pgbouncer (`{' '.join(install)}` exited {result.returncode}):\n"
        f"{(result.stderr or result.stdout)[-2000:]}\nInstall it by hand (`sudo apt-get install -y pgbouncer`) "
        "or leave it out with --paths direct,'floor: proxy','floor: proxy + fsync',gateway"
    )


def run_pgbench(dsn: str, clients: int, seconds: int, mode: str, log_dir: Path, script: Path | None = None) -> Run:
    """One pgbench run; on failure (exit status, or any failed transaction) the error holds pgbench's output."""
    for old in log_dir.glob("pgbench_log*"):
        old.unlink()
    threads = min(clients, 2)
    workload = ["-f", str(script)] if script else ["-S"]
    log_prefix = str(log_dir / "pgbench_log")
    command = ["pgbench", *workload, "-n", "-M", mode, "-c", str(clients), "-j", str(threads), "-T", str(seconds)]
    result = subprocess.run(
        [*command, "-l", "--log-prefix", log_prefix, dsn], capture_output=True, text=True, cwd=log_dir
    )
    found = re.search(r"tps = ([\d.]+)", result.stdout)
    latencies = []
    for path in log_dir.glob("pgbench_log*"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                latencies.append(int(parts[2]))  # microseconds
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    if result.returncode != 0 or not found or not latencies or (failed and int(failed.group(1))):
        shown = " ".join(command).replace(str(log_dir) + "/", "")
        return Run(error=f"$ {shown} <dsn>\nexit {result.returncode}\n{result.stderr}{result.stdout}".strip())
    latencies.sort()
    return Run(
        transactions=len(latencies),
        tps=float(found.group(1)),
        mean_ms=statistics.fmean(latencies) / 1000,
        p99_ms=latencies[int(len(latencies) * 0.99) - 1] / 1000,
    )


def timed_reads(dsn: str, mode: str, rows: int, reads: int) -> Reads:
    """``SELECT * FROM patients LIMIT rows`` with psycopg, fetching every row; seconds per read after a warm-up.

    simple: the literal statement, no parameters (psycopg sends a Query). extended: LIMIT as a parameter, unnamed
    statement (Parse/Bind/Describe/Execute/Sync). prepared: the same, prepared once under a name and executed.
    """
    import psycopg

    if mode == "simple":
        query, params, prepare = f"SELECT * FROM patients LIMIT {rows}", None, False
    else:
        query, params, prepare = "SELECT * FROM patients LIMIT %s", (rows,), mode == "prepared"
    times: list[float] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            first = conn.execute(query, params, prepare=prepare).fetchall()  # warm-up (and the prepare)
            for _ in range(reads):
                started = time.perf_counter()
                fetched = conn.execute(query, params, prepare=prepare).fetchall()
                times.append(time.perf_counter() - started)
                if len(fetched) != len(first):
                    raise RuntimeError(f"read returned {len(fetched)} rows, the warm-up {len(first)}")
    except (psycopg.Error, RuntimeError) as exc:
        return Reads(error=f"{type(exc).__name__}: {exc}".strip())
    return Reads(times=times, rows=first)


def profile_gateway(
    pid: int, dsn: str, clients: int, seconds: int, mode: str, work: Path, out: Path, top: int = 15
) -> str:
    """An extra pgbench -S run (not in the table) while py-spy samples the gateway; top functions by own time."""
    spy = Path(sys.executable).parent / "py-spy"
    spy_path = str(spy) if spy.exists() else shutil.which("py-spy")
    if not spy_path:
        return "Profile skipped: py-spy not found (`.venv/bin/pip install py-spy`)."
    rate = 250
    record = ["record", "--nonblocking", "--format", "raw", "-r", str(rate), "-d", str(seconds + 2)]
    spy_proc = subprocess.Popen(
        [spy_path, *record, "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    time.sleep(1)
    measured = run_pgbench(dsn, clients, seconds, mode, work)
    try:
        _, spy_err = spy_proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        os.killpg(spy_proc.pid, signal.SIGINT)
        _, spy_err = spy_proc.communicate(timeout=15)
    if not out.exists():
        return f"Profile failed: py-spy wrote nothing ({spy_err.decode(errors='replace').strip()[-500:]})"
    own: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        leaf = re.sub(r":\d+\)$", ")", stack.split(";")[-1])
        own[leaf] = own.get(leaf, 0) + int(samples)
        total += int(samples)
    if not total:
        return "Profile failed: py-spy recorded no samples."
    run = f"{measured.tps:,.0f} TPS, mean {measured.mean_ms:.3f} ms" if not measured.error else measured.error
    lines = [
        f"py-spy record --nonblocking -r {rate}, gateway pid, pgbench -S -M {mode} -c {clients} for {seconds} s "
        f"({run}); {total:,} samples with the gateway's thread active (idle waits not sampled, "
        f"{total / (rate * (seconds + 2)):.0%} of the sampling window).",
        "",
        "| # | function (file) | own samples | own % |",
        "| --- | --- | --- | --- |",
    ]
    for rank, (name, count) in enumerate(sorted(own.items(), key=lambda item: -item[1])[:top], 1):
        lines.append(f"| {rank} | `{name}` | {count:,} | {count / total:.1%} |")
    return "\n".join(lines)


def audit_coverage(statements: int, settle_seconds: float = 30) -> str:
    """Check every statement the gateway served has its submitted record in the event table (after shipping)."""
    from audit.models import AuditEvent, EventKind

    deadline = time.monotonic() + settle_seconds
    started = time.monotonic()
    recorded = 0
    while time.monotonic() < deadline:
        recorded = AuditEvent.objects.filter(kind=EventKind.QUERY_SUBMITTED, front="wire").count()
        if recorded >= statements:
            break
        time.sleep(0.2)
    waited = time.monotonic() - started
    return (
        f"Audit coverage: {recorded:,} submitted records in the event table for {statements:,} statements "
        f"completed by pgbench ({waited:.1f} s after the last run)."
    )


def fast_path_share(health_port: int, processes: int) -> str:
    """How many of the gateway's statements its fast paths answered (``GET /stats``, gateway.wire.stats)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/stats", timeout=5) as answer:
            wire = json.load(answer)["wire"]
    except OSError as exc:
        return f"Fast paths: /stats did not answer ({exc})."
    statements = wire["statements"] or 1
    scope = " (process 0 of the group)" if processes > 1 else ""
    return (
        f"Fast paths{scope}: {wire['fast_queries']:,} simple Queries and {wire['fast_batches']:,} extended batches "
        f"of {wire['statements']:,} statements ({(wire['fast_queries'] + wire['fast_batches']) / statements:.0%})."
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--modes", default="simple,extended,prepared", help="pgbench -M modes (first: the baseline)")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11", help="the control plane's REDIS_URL")
    parser.add_argument("--phi", action="store_true", help="also read a PHI-tagged table (masking on every row)")
    parser.add_argument("--read-rows", type=int, default=CLINIC_PATIENTS, help="with --phi: rows of the long read")
    parser.add_argument("--reads", type=int, default=7, help="with --phi: timed long reads per path and mode")
    parser.add_argument("--profile", metavar="FILE", help="after the runs, py-spy the gateway (raw collapsed stacks)")
    parser.add_argument("--profile-run", default="extended:1", metavar="MODE:CLIENTS", help="the profiled run")
    parser.add_argument("--serve", action="store_true", help="set up, print the DSNs, wait for a signal")
    parser.add_argument(
        "--audit",
        choices=("journal", "table"),
        default="journal",
        help="the gateway's audit path: local fsynced journal shipped in batches, or a commit of the event table",
    )
    parser.add_argument(
        "--gateway-processes",
        type=int,
        default=1,
        help="gateway processes sharing the port (manage.py gateway --processes; SO_REUSEPORT, gateway.wire.group)",
    )
    args = parser.parse_args()
    modes = args.modes.split(",")
    selected = args.paths.split(",")
    unknown = [name for name in selected if name not in PATHS]
    if unknown or not set(modes) <= {"simple", "extended", "prepared"}:
        raise SystemExit(f"unknown paths {unknown} or modes {modes}")
    if args.read_rows > CLINIC_PATIENTS:
        raise SystemExit(f"--read-rows at most {CLINIC_PATIENTS} (the clinic's patients)")
    pgbouncer = ensure_pgbouncer() if "pgbouncer" in selected else ""
    work = Path(tempfile.mkdtemp(prefix="phigate-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    started_at, load_at_start = time.monotonic(), os.getloadavg()
    try:
        psql(f'CREATE DATABASE "{CONTROL_DB}"')
        psql(f'CREATE DATABASE "{TARGET_DB}"')
        subprocess.run(
            ["pgbench", "-i", "-q", "-s", str(args.scale), f"{ADMIN}/{TARGET_DB}"], check=True, capture_output=True
        )
        env = {
            "DJANGO_SETTINGS_MODULE": "phigate.settings",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
            "DATABASE_URL": f"{ADMIN}/{CONTROL_DB}",
            "REDIS_URL": args.redis,
            "PSEUDONYM_KEY": secrets.token_hex(32),
            "PATIENT_PSEUDONYM_KEY": secrets.token_hex(32),
            "LOG_LEVEL": "WARNING",
        }
        if args.phi:
            import psycopg

            from demo.clinic import load_clinic

            with psycopg.connect(f"{ADMIN}/{TARGET_DB}") as conn:
                load_clinic(conn, patients=CLINIC_PATIENTS)
        read_url, credentials = setup_control_plane(env)
        if args.phi:
            from demo.clinic import PHI_TAGS
            from policy.models import DataSource, PhiColumn

            datasource = DataSource.objects.get(name="bench")
            for tag in PHI_TAGS:
                PhiColumn.objects.create(
                    datasource=datasource,
                    table_name=tag.table,
                    column_name=tag.column,
                    phi_type=tag.phi_type,
                )
            (work / "phi.sql").write_text(PHI_SCRIPT)
        psql(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{READ_ROLE}"', TARGET_DB)
        sys.stdout.flush()

        gateway_port = free_port()
        gateway_env = {**os.environ, **env, "DATASOURCE_BENCH_READ_URL": read_url}
        if args.audit == "journal":
            gateway_env["AUDIT_JOURNAL_DIR"] = str(work / "journal")
        health_port = free_port()
        gateway_env["GATEWAY_HEALTH_PORT"] = str(health_port)
        gateway_env.pop("DATASOURCE_BENCH_WRITE_URL", None)
        gateway = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "gateway",
                "--port",
                str(gateway_port),
                "--processes",
                str(args.gateway_processes),
            ],
            cwd=REPO,
            env=gateway_env,
            stdout=open(work / "gateway.log", "wb"),  # noqa: SIM115 - open for the child's lifetime
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(gateway)
        wait_port(gateway_port)

        bouncer_port = free_port()
        if pgbouncer:
            (work / "pgbouncer.ini").write_text(
                f"[databases]\n{TARGET_DB} = host=127.0.0.1 port=5432 dbname={TARGET_DB} user=postgres\n"
                f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {bouncer_port}\nauth_type = trust\n"
                f"auth_file = {work}/users.txt\npool_mode = transaction\nmax_client_conn = 100\n"
                f"default_pool_size = 20\nunix_socket_dir =\nlogfile = {work}/pgbouncer.log\n"
            )
            (work / "users.txt").write_text('"postgres" ""\n')
            as_user: list[str] = []
            if os.geteuid() == 0:  # pgbouncer refuses to run as root
                as_user = ["-u", "postgres"]
                shutil.chown(work, "postgres")
                for path in work.iterdir():
                    shutil.chown(path, "postgres")
            processes.append(
                subprocess.Popen([pgbouncer, *as_user, str(work / "pgbouncer.ini")], start_new_session=True)
            )
            wait_port(bouncer_port)

        # The floors (bench/floor_proxy.py): what any Python proxy costs here, without and with one durable record
        # per statement. They bound what the gateway can reach on this machine.
        floor_ports = {"floor: proxy": free_port(), FSYNC_FLOOR: free_port()}
        for name, port in floor_ports.items():
            journal = str(work / "floor-journal") if "fsync" in name else "none"
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(REPO / "bench" / "floor_proxy.py"), "--port", str(port), "--journal", journal],
                    start_new_session=True,
                )
            )
            wait_port(port)

        paths = {
            "direct": f"{ADMIN}/{TARGET_DB}",
            "pgbouncer": f"postgresql://postgres@127.0.0.1:{bouncer_port}/{TARGET_DB}",
            **{
                name: f"postgresql://postgres@127.0.0.1:{port}/{TARGET_DB}?sslmode=disable"
                for name, port in floor_ports.items()
            },
            "gateway": f"postgresql://{credentials}@127.0.0.1:{gateway_port}/bench?sslmode=disable",
        }
        if args.serve:  # for profiling by hand: keep everything up until interrupted
            print("\n".join(f"{name}: {dsn}" for name, dsn in paths.items()), flush=True)
            # The gateway's environment (bench-only keys), so more gateways (another tree, for an A/B) can start.
            env_file = work / "gateway.env"
            env_file.touch(mode=0o600)
            env_file.write_text(
                "".join(f"{k}={v}\n" for k, v in gateway_env.items() if k in {*env, "DATASOURCE_BENCH_READ_URL"})
            )
            print(f"gateway pid: {gateway.pid}\ngateway env: {env_file}\nwork: {work}", flush=True)
            stop = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # so that sigwait takes them and the cleanup runs
            signal.sigwait(stop)
            return
        gateway_statements = 0
        workloads: list[tuple[str, Path | None]] = [("pgbench -S", None)]
        if args.phi:
            workloads.append(("patients, masked", work / "phi.sql"))
        client_counts = [int(c) for c in args.clients.split(",")]
        # (workload, clients, mode, path) -> run; the paths of one workload and client count run back to back
        results: dict[tuple[str, int, str, str], Run] = {}
        for label, script in workloads:
            for clients in client_counts:
                for mode in modes:
                    for name in selected:
                        if mode != modes[0] and name not in EVERY_MODE:
                            continue
                        if script and name in ("pgbouncer", "floor: proxy"):
                            continue
                        run = run_pgbench(paths[name], clients, args.seconds, mode, work, script)
                        results[(label, clients, mode, name)] = run
                        if name == "gateway":
                            gateway_statements += run.transactions
                        shown = f"{run.tps:,.0f} TPS" if not run.error else "FAILED"
                        print(f"  {label}, {clients} clients, -M {mode}, {name}: {shown}", file=sys.stderr)

        reads: dict[tuple[str, str], Reads] = {}
        if args.phi:
            for mode in modes:
                for name in ("direct", "gateway"):
                    if name in selected:
                        reads[(mode, name)] = timed_reads(paths[name], mode, args.read_rows, args.reads)
                        if name == "gateway" and not reads[(mode, name)].error:
                            gateway_statements += args.reads + 1

        def cell(key: tuple[str, int, str, str]) -> Run | None:
            found = results.get(key)
            return None if found is None or found.error else found

        rows, failures = [], []
        for (label, clients, mode, name), m in results.items():
            if m.error:
                failures.append(f"{label}, {clients} clients, -M {mode}, {name}:\n{m.error}")
                rows.append(f"| {label} | {clients} | {mode} | {name} | failed | - | - | - | - | - | - |")
                continue
            base = cell((label, clients, mode, "direct")) or cell((label, clients, modes[0], "direct"))
            ratio = f"{m.tps / base.tps:.2f}x" if base else "-"
            added = f"{(m.mean_ms - base.mean_ms) * 1000:+.0f} µs" if base else "-"
            floor = cell((label, clients, mode, FSYNC_FLOOR))
            versus_floor = "-"
            if name == "gateway" and floor:
                versus_floor = (
                    f"{(m.mean_ms - floor.mean_ms) * 1000:+.0f} µs" if clients == 1 else f"{m.tps / floor.tps:.2f}x TPS"
                )
            simple = cell((label, clients, "simple", name))
            versus_simple = f"{m.mean_ms / simple.mean_ms:.2f}x" if simple and mode != "simple" else "-"
            rows.append(
                f"| {label} | {clients} | {mode} | {name} | {m.tps:,.0f} | {ratio} | {m.mean_ms:.3f} | "
                f"{added} | {m.p99_ms:.3f} | {versus_floor} | {versus_simple} |"
            )
        print(f"\npgbench -M {'/'.join(modes)}, scale {args.scale}, {args.seconds} s per run, audit via {args.audit}")
        print(
            "(vs direct, added mean: against direct PostgreSQL in the same mode; vs floor: the gateway against "
            f"`{FSYNC_FLOOR}` in the same mode, added mean latency at 1 client, TPS ratio at more; vs simple: mean "
            "latency against the same path in -M simple)\n"
        )
        print(
            "| workload | clients | mode | path | TPS | vs direct | mean ms | added mean | p99 ms "
            f"| vs {FSYNC_FLOOR} | vs simple |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        print("\n".join(rows))

        read_ratios: dict[str, float] = {}
        if reads:
            print(
                f"\nMasked read of {args.read_rows:,} rows of `patients`, every column (psycopg 3, text results, "
                f"fetchall), median of {args.reads} reads after one warm-up on an open connection:\n"
            )
            print("| mode | path | median ms | min ms | max ms | vs direct |")
            print("| --- | --- | --- | --- | --- | --- |")
            for (mode, name), r in reads.items():
                if r.error:
                    failures.append(f"masked {args.read_rows}-row read, {mode}, {name}:\n{r.error}")
                    print(f"| {mode} | {name} | failed | - | - | - |")
                    continue
                direct_times = reads[(mode, "direct")].times if (mode, "direct") in reads else []
                versus = "-"
                if direct_times:
                    versus = f"{statistics.median(r.times) / statistics.median(direct_times):.2f}x"
                    if name == "gateway":
                        read_ratios[mode] = statistics.median(r.times) / statistics.median(direct_times)
                print(
                    f"| {mode} | {name} | {statistics.median(r.times) * 1000:.1f} | {min(r.times) * 1000:.1f} | "
                    f"{max(r.times) * 1000:.1f} | {versus} |"
                )
            gateway_rows = next((r.rows for (_, n), r in reads.items() if n == "gateway" and r.rows), [])
            direct_rows = next((r.rows for (_, n), r in reads.items() if n == "direct" and r.rows), [])
            if gateway_rows and direct_rows:
                changed = [
                    sum(1 for got, want in zip(gateway_rows, direct_rows, strict=False) if got[column] != want[column])
                    for column in range(len(direct_rows[0]))
                ]
                print(
                    f"\nMasking check: the gateway returned {len(gateway_rows):,} rows (direct {len(direct_rows):,}); "
                    "values differing from direct, per column: " + ", ".join(str(n) for n in changed)
                )

        target_lines = []
        for mode in modes:
            gateway_1, floor_1 = cell(("pgbench -S", 1, mode, "gateway")), cell(("pgbench -S", 1, mode, FSYNC_FLOOR))
            if gateway_1 and floor_1:
                added_us = (gateway_1.mean_ms - floor_1.mean_ms) * 1000
                target_lines.append(
                    f"- 1 client, -M {mode}: gateway adds {added_us:+.0f} µs over `{FSYNC_FLOOR}` "
                    f"(target <= +{TARGET_ADDED_US} µs): {'met' if added_us <= TARGET_ADDED_US else 'missed'}"
                )
        for mode in modes:
            gateway_8, floor_8 = cell(("pgbench -S", 8, mode, "gateway")), cell(("pgbench -S", 8, mode, FSYNC_FLOOR))
            if gateway_8 and floor_8:
                share = gateway_8.tps / floor_8.tps
                target_lines.append(
                    f"- 8 clients, -M {mode}: gateway {share:.2f}x the TPS of `{FSYNC_FLOOR}` "
                    f"(target >= {TARGET_FLOOR_TPS}x): {'met' if share >= TARGET_FLOOR_TPS else 'missed'}"
                )
        for clients in client_counts:
            gateway_simple = cell(("pgbench -S", clients, "simple", "gateway"))
            for mode in ("extended", "prepared"):
                other = cell(("pgbench -S", clients, mode, "gateway"))
                if gateway_simple and other:
                    slower = other.mean_ms / gateway_simple.mean_ms
                    target_lines.append(
                        f"- {clients} client(s), gateway -M {mode} vs -M simple: mean latency {slower:.2f}x, "
                        f"TPS {other.tps / gateway_simple.tps:.2f}x (target within {TARGET_MODE_RATIO}x): "
                        f"{'met' if slower <= TARGET_MODE_RATIO else 'missed'}"
                    )
                elif ("pgbench -S", clients, mode, "gateway") in results:
                    target_lines.append(f"- {clients} client(s), gateway -M {mode}: failed (below)")
        for mode, times in read_ratios.items():
            target_lines.append(
                f"- masked {args.read_rows:,}-row read, {mode}: gateway {times:.2f}x direct "
                f"(target <= {TARGET_READ_RATIO:.0f}x): {'met' if times <= TARGET_READ_RATIO else 'missed'}"
            )
        if target_lines:
            print("\nTargets (pgbench -S unless said):\n" + "\n".join(target_lines))
        if failures:
            print("\nFailures:\n\n" + "\n\n".join(failures))
        if "gateway" in selected:
            print("\n" + audit_coverage(gateway_statements))
            print(fast_path_share(health_port, args.gateway_processes))
        if args.profile:
            mode, _, clients_text = args.profile_run.partition(":")
            print(
                "\n"
                + profile_gateway(
                    gateway.pid, paths["gateway"], int(clients_text or 1), args.seconds, mode, work, Path(args.profile)
                )
            )
        load = ", ".join(f"{one:.2f}" for one in (load_at_start[0], os.getloadavg()[0]))
        print(
            f"\nWall time {time.monotonic() - started_at:.0f} s; 1-minute load average at start and end {load} "
            f"on {os.cpu_count()} CPUs (anything else running skews every path, the floors included); "
            f"gateway processes: {args.gateway_processes}."
        )
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        from django.db import connections

        connections.close_all()
        psql(f'DROP DATABASE IF EXISTS "{CONTROL_DB}" WITH (FORCE)')
        psql(f'DROP DATABASE IF EXISTS "{TARGET_DB}" WITH (FORCE)')
        psql(f'DROP ROLE IF EXISTS "{READ_ROLE}"')
        psql(f'DROP ROLE IF EXISTS "{WRITE_ROLE}"')
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
