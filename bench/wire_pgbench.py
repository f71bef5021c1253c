"""pgbench -S through several paths in one run: direct PostgreSQL, pgbouncer, two floors, and the phigate gateway.

The floors (``bench/floor_proxy.py``) are a bare Python byte-copying proxy, and the same proxy holding every answer
until an fsync covers a record of its request: what any Python gateway with durable audit costs here, at least.

Run: ``.venv/bin/python bench/wire_pgbench.py [--seconds 10] [--scale 10]`` on a machine with PostgreSQL on
127.0.0.1:5432 (trust auth for ``postgres``), Redis, pgbench and pgbouncer (``apt-get install pgbouncer``).
Auditing is on for the gateway, as in production: every statement's audit record commits before its rows leave.
Prints a Markdown table (TPS, mean and p99 latency) for docs/benchmarks.md. Creates and drops its own databases.
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
from pathlib import Path

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


def run_pgbench(
    dsn: str, clients: int, seconds: int, mode: str, log_dir: Path, script: Path | None = None
) -> dict[str, float]:
    for old in log_dir.glob("pgbench_log*"):
        old.unlink()
    threads = min(clients, 2)
    workload = ["-f", str(script)] if script else ["-S"]
    log_prefix = str(log_dir / "pgbench_log")
    command = ["pgbench", *workload, "-n", "-M", mode, "-c", str(clients), "-j", str(threads), "-T", str(seconds)]
    result = subprocess.run(
        [*command, "-l", "--log-prefix", log_prefix, dsn], capture_output=True, text=True, cwd=log_dir
    )
    if result.returncode != 0:
        raise SystemExit(f"pgbench failed: {result.stderr}{result.stdout}")
    tps = float(re.search(r"tps = ([\d.]+)", result.stdout).group(1))  # type: ignore[union-attr]
    latencies = []
    for path in log_dir.glob("pgbench_log*"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                latencies.append(int(parts[2]))  # microseconds
    latencies.sort()
    return {
        "transactions": float(len(latencies)),
        "tps": tps,
        "mean_ms": statistics.fmean(latencies) / 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] / 1000,
    }


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--mode", default="simple")
    parser.add_argument("--paths", default="direct,pgbouncer,floor: proxy,floor: proxy + fsync,gateway")
    parser.add_argument("--profile", metavar="FILE", help="record the gateway with py-spy (collapsed stacks)")
    parser.add_argument("--phi", action="store_true", help="also read a PHI-tagged table (masking on every row)")
    parser.add_argument("--serve", action="store_true", help="set up, print the DSNs, wait for a signal")
    parser.add_argument(
        "--audit",
        choices=("journal", "table"),
        default="journal",
        help="the gateway's audit path: local fsynced journal shipped in batches, or a commit of the event table",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="phigate-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
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
            "REDIS_URL": "redis://127.0.0.1:6379/11",
            "PSEUDONYM_KEY": secrets.token_hex(32),
            "LOG_LEVEL": "WARNING",
        }
        if args.phi:
            import psycopg

            from demo.clinic import load_clinic

            with psycopg.connect(f"{ADMIN}/{TARGET_DB}") as conn:
                load_clinic(conn, patients=10_000)
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
        gateway_env.pop("DATASOURCE_BENCH_WRITE_URL", None)
        processes.append(
            subprocess.Popen(
                [sys.executable, "manage.py", "gateway", "--port", str(gateway_port)],
                cwd=REPO,
                env=gateway_env,
                stdout=open(work / "gateway.log", "wb"),  # noqa: SIM115 - open for the child's lifetime
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        wait_port(gateway_port)
        if args.profile:
            processes.append(
                subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--format",
                        "raw",
                        "-o",
                        args.profile,
                        "-r",
                        "200",
                        "-p",
                        str(processes[0].pid),
                    ],
                    start_new_session=True,
                )
            )

        bouncer_port = free_port()
        (work / "pgbouncer.ini").write_text(
            f"[databases]\n{TARGET_DB} = host=127.0.0.1 port=5432 dbname={TARGET_DB} user=postgres\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {bouncer_port}\nauth_type = trust\n"
            f"auth_file = {work}/users.txt\npool_mode = transaction\nmax_client_conn = 100\n"
            f"default_pool_size = 20\nunix_socket_dir =\nlogfile = {work}/pgbouncer.log\n"
        )
        (work / "users.txt").write_text('"postgres" ""\n')
        shutil.chown(work, "postgres")
        for path in work.iterdir():
            shutil.chown(path, "postgres")
        processes.append(
            subprocess.Popen(["pgbouncer", "-u", "postgres", str(work / "pgbouncer.ini")], start_new_session=True)
        )
        wait_port(bouncer_port)

        # The floors (bench/floor_proxy.py): what any Python proxy costs here, without and with one durable record
        # per statement. They bound what the gateway can reach on this machine.
        floor_ports = {"floor: proxy": free_port(), "floor: proxy + fsync": free_port()}
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
            stop = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # so that sigwait takes them and the cleanup runs
            signal.sigwait(stop)
            return
        selected = args.paths.split(",")
        rows = []
        gateway_statements = 0
        workloads: list[tuple[str, Path | None]] = [("pgbench -S", None)]
        if args.phi:
            workloads.append(("patients, masked", work / "phi.sql"))
        for label, script in workloads:
            for clients in (int(c) for c in args.clients.split(",")):
                measured = {
                    name: run_pgbench(paths[name], clients, args.seconds, args.mode, work, script)
                    for name in selected
                    if not (script and (name == "pgbouncer" or name.startswith("floor")))
                }
                if "gateway" in measured:
                    gateway_statements += int(measured["gateway"]["transactions"])
                base = measured.get("direct")
                for name, m in measured.items():
                    ratio = f"{m['tps'] / base['tps']:.2f}x" if base else "-"
                    added = f"{(m['mean_ms'] - base['mean_ms']) * 1000:+.0f} µs" if base else "-"
                    rows.append(
                        f"| {label} | {clients} | {name} | {m['tps']:,.0f} | {ratio} | {m['mean_ms']:.3f} | "
                        f"{added} | {m['p99_ms']:.3f} |"
                    )
        print(f"pgbench -M {args.mode}, scale {args.scale}, {args.seconds} s per run, audit via {args.audit}\n")
        print("| workload | clients | path | TPS | vs direct | mean ms | added mean | p99 ms |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        print("\n".join(rows))
        if "gateway" in selected:
            print("\n" + audit_coverage(gateway_statements))
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
