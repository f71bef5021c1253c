"""How fast can *any* gateway be here if every statement's audit record must be on disk before its result?

Run: ``.venv/bin/python bench/durability_floor.py [--seconds 5] [--clients 8]``. It measures, on this machine:

* ``fdatasync`` of a small record in a pre-zeroed file (what audit.journal does), idle and while
  ``pgbench -S`` runs straight against PostgreSQL with the given number of clients (the CPU is then saturated, as
  during the wire benchmark);
* a one-row ``INSERT`` commit into a plain table, idle and under the same load.

With closed-loop clients (each waits for its result before sending the next statement), a gateway that makes one
durable write per statement can at best complete ``clients / mean write latency`` statements per second,
whatever else it does (Little's law). The script prints that bound against direct PostgreSQL's TPS measured
alone, and the same with the median latency as an optimistic figure. Creates and drops its own database.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg

ADMIN = "postgresql://postgres@127.0.0.1:5432"
DB = f"durability_floor_{os.getpid()}"


def fsync_latencies(seconds: float) -> list[float]:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as directory:
        path = Path(directory) / "segment"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.write(fd, b"\0" * (16 << 20))
        os.fsync(fd)
        record, offset, samples = b"x" * 700, 0, []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and offset + len(record) < 16 << 20:
            os.pwrite(fd, record, offset)
            offset += len(record)
            started = time.perf_counter()
            os.fdatasync(fd)
            samples.append(time.perf_counter() - started)
        os.close(fd)
    return samples


def commit_latencies(seconds: float) -> list[float]:
    samples = []
    with psycopg.connect(f"{ADMIN}/{DB}", autocommit=True) as conn:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            conn.execute("INSERT INTO floor_probe (note) VALUES ('x')")
            samples.append(time.perf_counter() - started)
    return samples


def run_load(command: list[str], into: dict[str, str]) -> None:
    into["out"] = subprocess.run(command, capture_output=True, text=True).stdout


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    mean = statistics.fmean(ordered) * 1e6
    return (
        f"mean {mean:.0f} µs, p50 {ordered[len(ordered) // 2] * 1e6:.0f} µs, "
        f"p99 {ordered[int(len(ordered) * 0.99)] * 1e6:.0f} µs ({len(ordered):,} samples)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    subprocess.run(["psql", ADMIN, "-qc", f'CREATE DATABASE "{DB}"'], check=True, capture_output=True)
    try:
        subprocess.run(["pgbench", "-i", "-q", "-s", "10", f"{ADMIN}/{DB}"], check=True, capture_output=True)
        with psycopg.connect(f"{ADMIN}/{DB}", autocommit=True) as conn:
            conn.execute("CREATE TABLE floor_probe (id bigserial PRIMARY KEY, note text)")
        command = ["pgbench", "-S", "-n", "-c", str(args.clients), "-j", "2"]
        alone = subprocess.run(
            [*command, "-T", str(int(args.seconds)), f"{ADMIN}/{DB}"], capture_output=True, text=True
        ).stdout
        results: dict[str, list[float]] = {
            "direct TPS alone": [float(re.search(r"tps = ([\d.]+)", alone).group(1))]  # type: ignore[union-attr]
        }
        results["fsync idle"] = fsync_latencies(args.seconds)
        results["commit idle"] = commit_latencies(args.seconds)
        for label, probe in (("fsync under load", fsync_latencies), ("commit under load", commit_latencies)):
            load: dict[str, str] = {}
            loaded = [*command, "-T", str(int(args.seconds) + 2), f"{ADMIN}/{DB}"]
            runner = threading.Thread(target=run_load, args=(loaded, load))
            runner.start()
            time.sleep(1)
            results[label] = probe(args.seconds)
            runner.join()
            tps = float(re.search(r"tps = ([\d.]+)", load["out"]).group(1))  # type: ignore[union-attr]
            results[f"direct TPS during {label}"] = [tps]
        for label, samples in results.items():
            print(f"{label}: {samples[0]:,.0f}" if label.startswith("direct") else f"{label}: {summary(samples)}")
        # Little's law: closed-loop clients complete at most clients / mean latency statements per second, and a
        # statement's latency is at least one durable write that began after it arrived. The mean is the bound;
        # the median is shown too, as an optimistic figure.
        direct = results["direct TPS alone"][0]
        for kind in ("fsync", "commit"):
            samples = results[f"{kind} under load"]
            for name, latency in (("mean", statistics.fmean(samples)), ("median", statistics.median(samples))):
                bound = args.clients / latency
                print(
                    f"closed-loop bound with one durable {kind} per statement at {args.clients} clients "
                    f"({name} latency): {bound:,.0f} statements/s = {bound / direct:.2f}x direct alone"
                )
    finally:
        subprocess.run(["psql", ADMIN, "-qc", f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)'], capture_output=True)


if __name__ == "__main__":
    main()
