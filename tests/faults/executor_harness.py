"""Real processes and exact crash points for the executor fault tests (tests/faults/test_execution_crashes.py).

Processes: a private ``redis-server`` (so stopping it touches no other test, and no other test's worker can take
these tasks), Celery workers started as the README starts the executor, and the real web process for approvals.
The test process creates tickets in-process (it plays the gateway) and never talks to this Redis itself.

Crash points, without any hook in the product: the test holds a row lock that the executor needs next, waits
until PostgreSQL shows the executor's backend waiting for it, and then kills a process.

- before the claim: the ticket's row, locked before the worker starts (the claim is an UPDATE of that row);
- during the statement: the target row the approved UPDATE changes;
- after the target committed, before the ticket says so: the ticket's row again, locked while the statement
  is held on the target and kept when the target row is let go.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import psycopg
from celery import Celery
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import transaction

from approvals.lifecycle import open_ticket as open_held
from approvals.models import FINAL_STATUSES, Risk, Ticket
from audit.models import AuditEvent, EventKind
from audit.recorder import Context
from identity.models import Agent, ApiToken
from identity.principal import Principal
from identity.roles import Role
from policy.models import DataSource
from tests import environment
from tests import services as svc
from tests.factories import make_agent, make_user

# The fault tests' own data source on the session's target database: no approver rules, Slack channels or PHI
# tags that other tests may have left on "clinic" can change what these tickets need or do.
DATASOURCE = "faultsrc"
COUNTER_TABLE = "fault_counter"
CONTROL_URL = environment.db_url(environment.CONTROL_DB)
_row_ids = itertools.count(1)


class PrivateRedis:
    """A redis-server of our own on a free port, killed and started again on the same port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = svc.free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - kept open for the child's lifetime
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*argv, "--dir", str(self.directory)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=svc.die_with_the_test_run,
        )
        svc.wait_until(lambda: svc.port_open(self.port), 10, what="private redis to listen")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        svc.wait_until(lambda: not svc.port_open(self.port), 10, what="private redis to stop listening")


class Worker(svc.Service):
    """One executor (``celery -A phigate worker``) with a single pool child, so "the pool child" is one process."""

    def __init__(self, name: str, broker_url: str, write_url: str, log_dir: Path) -> None:
        self.node = f"{name}-{environment.RUN_ID}@{socket.gethostname()}"
        argv = [sys.executable, "-m", "celery", "-A", "phigate", "worker", "--loglevel=INFO", "--concurrency=1"]
        argv += ["-n", self.node, "--without-gossip", "--without-mingle"]
        env = {
            "REDIS_URL": broker_url,
            f"DATASOURCE_{DATASOURCE.upper()}_WRITE_URL": write_url,
            "SLACK_BOT_TOKEN": "",  # no Slack tasks competing for the single pool child
            # A killed worker leaves its multiprocessing temp directory behind: keep those out of /tmp.
            "TMPDIR": str(log_dir),
            "EXECUTION_SWEEP_SECONDS": "1",
        }
        super().__init__(name, argv, env, log_dir)
        self.broker_url = broker_url

    def wait_ready(self) -> Worker:
        probe = Celery("fault-probe", broker=self.broker_url, set_as_current=False)
        try:

            def answered() -> bool:
                if not self.alive():
                    raise AssertionError(self.log_tail())
                return bool(probe.control.ping(destination=[self.node], timeout=0.5))

            svc.wait_until(answered, 60, interval=0.2, what=f"{self.name} to answer ping")
        finally:
            probe.close()
        return self

    def pool_children(self) -> list[int]:
        assert self.process is not None
        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def pool_child(self) -> int:
        children = self.pool_children()
        assert len(children) == 1, f"expected one pool child, found {children}"
        return children[0]

    def kill_main(self) -> None:
        """SIGKILL the main process only; its pool child follows (Celery sets PR_SET_PDEATHSIG)."""
        assert self.process is not None
        children = psutil.Process(self.process.pid).children()
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        psutil.wait_procs(children, timeout=10)

    def kill_pool_child(self) -> int:
        """SIGKILL the pool child only; the main process lives on and forks a new one."""
        child = self.pool_child()
        os.kill(child, signal.SIGKILL)
        svc.wait_until(lambda: not psutil.pid_exists(child) or _zombie(child), 10, what="pool child to die")
        return child

    def kill_everything(self) -> None:
        """Teardown: the whole process group, even when its leader is already gone."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass
class Fleet:
    """What one test module runs: the private Redis, the web process, and the workers it started."""

    redis: PrivateRedis
    web_url: str
    write_url: str
    owner_url: str
    log_dir: Path
    workers: list[Worker]
    names: Iterator[int]

    def worker(self, label: str = "executor") -> Worker:
        return self.start_workers(label)[0]

    def start_workers(self, *labels: str) -> list[Worker]:
        """Start several workers at once (their start-ups overlap), then wait until each answers."""
        started = []
        for label in labels or ("executor",):
            worker = Worker(f"fault-{label}-{next(self.names)}", self.redis.url, self.write_url, self.log_dir)
            self.workers.append(worker)
            started.append(worker)
            worker.start()
        return [worker.wait_ready() for worker in started]

    def keep(self, count: int) -> list[Worker]:
        """Exactly ``count`` live workers: reuse the ones running (killing extras), start the missing ones."""
        for worker in [worker for worker in self.workers if not worker.alive()]:
            worker.kill_everything()  # what a killed main process left behind
            self.workers.remove(worker)
        while len(self.workers) > count:
            self.workers.pop().kill_everything()
        missing = count - len(self.workers)
        if missing:
            self.start_workers(*["executor"] * missing)
        return list(self.workers)

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.kill_everything()
        self.workers.clear()

    def executing(self, ticket_id: int) -> Worker:
        """The worker whose pool child holds the ticket's executor lock (its session's application_name)."""

        def holder() -> Worker | None:
            with psycopg.connect(CONTROL_URL, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
                    (f"phigate-executor pid % ticket {ticket_id}",),
                ).fetchall()
            pids = {int(name.split()[2]) for (name,) in rows}
            return next((w for w in self.workers if w.alive() and set(w.pool_children()) & pids), None)

        found = svc.wait_until(holder, 30, what=f"the worker executing ticket {ticket_id}")
        assert isinstance(found, Worker)
        return found


# --- data --------------------------------------------------------------------------------------------------------


def create_counter_table(owner_url: str, write_role: str) -> None:
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {COUNTER_TABLE}")
        conn.execute(f"CREATE TABLE {COUNTER_TABLE} (id int PRIMARY KEY, runs int NOT NULL DEFAULT 0)")
        conn.execute(f'ALTER TABLE {COUNTER_TABLE} OWNER TO "{write_role}"')


def drop_counter_table(owner_url: str) -> None:
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {COUNTER_TABLE}")


def new_counter(owner_url: str) -> int:
    """A fresh row whose ``runs`` counts how many times an approved increment committed: the target's truth."""
    row_id = next(_row_ids)
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {COUNTER_TABLE} (id, runs) VALUES (%s, 0)", (row_id,))
    return row_id


def runs(owner_url: str, row_id: int) -> int:
    with psycopg.connect(owner_url, autocommit=True) as conn:
        row = conn.execute(f"SELECT runs FROM {COUNTER_TABLE} WHERE id = %s", (row_id,)).fetchone()
    assert row is not None
    return int(row[0])


def increment_sql(row_id: int) -> str:
    """Not idempotent, so running it twice shows in the data and not only in the ticket."""
    return f"UPDATE {COUNTER_TABLE} SET runs = runs + 1 WHERE id = {row_id}"


@dataclass(frozen=True)
class People:
    """The requester (an agent and its owner) and a reviewer's API token."""

    owner: User
    agent: Agent
    reviewer_token: str


def people() -> People:
    owner = make_user(Role.ENGINEER, name="fault-owner")
    agent, _ = make_agent(owner)
    _, token = ApiToken.issue(user=make_user(Role.REVIEWER, name="fault-reviewer"))
    return People(owner=owner, agent=agent, reviewer_token=token)


def open_ticket(who: People, sql: str, statement_type: str = "UPDATE") -> int:
    """A held statement, as the gateway opens it (same function, same transaction with its audit event)."""
    datasource, _ = DataSource.objects.get_or_create(name=DATASOURCE)
    with transaction.atomic():
        ticket = open_held(
            principal=Principal(human=who.owner, agent=who.agent),
            datasource=datasource,
            sql=sql,
            reason="fault test",
            risk=Risk.MODERATE,
            reasons=["writes data"],
            statement_types=[statement_type],
            relations=[f"public.{COUNTER_TABLE}"],
            approvals_required=1,
            fingerprint="",
            context=Context(front="http"),
        )
    return int(ticket.pk)


def approve(web_url: str, who: People, ticket_id: int) -> int:
    """Approve through the real web process (its enqueue is the one under test); returns the HTTP status."""
    response = httpx.post(
        f"{web_url}/api/v1/tickets/{ticket_id}/reviews",
        json={"decision": "approve", "comment": "checked by the fault test"},
        headers={"Authorization": f"Bearer {who.reviewer_token}"},
        timeout=30,
    )
    return response.status_code


# --- crash points ------------------------------------------------------------------------------------------------


class RowLock:
    """``SELECT ... FOR UPDATE`` on one row, held from ``acquire`` until ``release`` (a rollback; idempotent)."""

    def __init__(self, url: str, table: str, row_id: int) -> None:
        self.url, self.table, self.row_id = url, table, row_id
        self.conn: psycopg.Connection | None = None  # type: ignore[type-arg]

    def acquire(self) -> RowLock:
        self.conn = psycopg.connect(self.url)
        self.conn.execute(f"SELECT 1 FROM {self.table} WHERE id = %s FOR UPDATE", (self.row_id,))
        return self

    def release(self) -> None:
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None

    def __enter__(self) -> RowLock:
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()


def ticket_lock(ticket_id: int) -> RowLock:
    return RowLock(CONTROL_URL, "approvals_ticket", ticket_id)


def target_row_lock(owner_url: str, row_id: int) -> RowLock:
    return RowLock(owner_url, COUNTER_TABLE, row_id)


def _waiting_on_lock(url: str, query_prefix: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s "
            "AND pid <> pg_backend_pid()",
            (query_prefix + "%",),
        ).fetchone()
    return bool(row and row[0])


def wait_executor_at_ticket_update(timeout: float = 30) -> None:
    """An executor is waiting to UPDATE a ticket row the test holds (its claim, or its final transition)."""
    svc.wait_until(
        lambda: _waiting_on_lock(CONTROL_URL, 'UPDATE "approvals_ticket"'), timeout, what="executor at ticket"
    )


def wait_statement_on_target(owner_url: str, row_id: int, timeout: float = 30) -> None:
    """The approved statement is running on the target (waiting for the target row the test holds)."""
    svc.wait_until(
        lambda: _waiting_on_lock(owner_url, increment_sql(row_id)), timeout, what="statement running on the target"
    )


def statement_backends(owner_url: str, row_id: int) -> set[int]:
    """Target backends running the approved statement now (a recovery's later run has a new pid)."""
    with psycopg.connect(owner_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE query = %s AND state <> 'idle' AND pid <> pg_backend_pid()",
            (increment_sql(row_id),),
        ).fetchall()
    return {int(pid) for (pid,) in rows}


def wait_backends_gone(owner_url: str, pids: set[int], timeout: float = 15) -> None:
    """The orphaned backends notice their client is gone (client_connection_check_interval) and roll back."""

    def gone() -> bool:
        with psycopg.connect(owner_url, autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (list(pids),)).fetchall()
        return not rows

    svc.wait_until(gone, timeout, what="the orphaned backend to roll back")


# --- outcomes ----------------------------------------------------------------------------------------------------


def settled(ticket_id: int, timeout: float = 40) -> Ticket:
    def final() -> Ticket | None:
        ticket = Ticket.objects.get(pk=ticket_id)
        return ticket if ticket.status in FINAL_STATUSES else None

    found = svc.wait_until(final, timeout, interval=0.2, what=f"ticket {ticket_id} to settle")
    assert isinstance(found, Ticket)
    return found


def outcome_events(ticket_id: int) -> list[str]:
    """The ticket's outcome records, after checking that its trail up to the approval is there, in order."""
    trail = list(AuditEvent.objects.for_ticket(ticket_id).values_list("kind", flat=True))
    assert trail[:3] == [EventKind.TICKET_CREATED, EventKind.TICKET_REVIEWED, EventKind.TICKET_APPROVED], trail
    outcomes = (EventKind.TICKET_EXECUTED, EventKind.TICKET_FAILED)
    return [kind for kind in trail if kind in outcomes]


def assert_audit_verifies() -> None:
    call_command("verify_audit", stdout=io.StringIO())  # raises CommandError when the chain does not verify


def pause(seconds: float) -> None:
    """Give sweeps (every second in these workers) time to act, where the point is that they must not."""
    time.sleep(seconds)
