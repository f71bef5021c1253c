"""Exactly-once execution through every crash (issue 15; invariant 5, docs/invariants.md).

Real Celery workers on a private Redis, the real web process for approvals, real PostgreSQL. Each test stops
an executor at one step with a row lock (tests/faults/executor_harness.py), kills its main process or only its
pool child with SIGKILL, and then checks the truth in the target's data, not only in the ticket: every approved
ticket ran exactly once or failed truthfully, has exactly one outcome record, and the audit chain verifies.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from approvals import statement_runner
from approvals.models import Status, Ticket
from audit.models import AuditEvent, EventKind
from tests import environment
from tests import services as svc
from tests.faults import executor_harness as h

KILLS = ["main", "child"]


@pytest.fixture(scope="module")
def fleet(target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Fleet]:  # type: ignore[no-untyped-def]
    """A private Redis, the web process on it, and the workers the tests start; all killed at the end."""
    log_dir = tmp_path_factory.mktemp("fault-executor")
    h.create_counter_table(target.owner_url, environment.WRITE_ROLE)
    redis = h.PrivateRedis(log_dir)
    running = h.Fleet(redis, "", target.write_url, target.owner_url, log_dir, workers=[], names=iter(range(1, 1000)))
    web: svc.Service | None = None
    try:
        redis.start()
        web, port = svc.web(log_dir, name="fault-web", extra_env={"REDIS_URL": redis.url, "SLACK_BOT_TOKEN": ""})
        running.web_url = f"http://127.0.0.1:{port}"
        yield running
    finally:
        running.stop_workers()
        if web is not None:
            web.stop()
        redis.kill()
        h.drop_counter_table(target.owner_url)


@pytest.fixture(scope="module")
def who(fleet: h.Fleet) -> h.People:
    """The requester (an agent and its owner) and a reviewer, shared by the module's tickets."""
    return h.people()


def _kill(worker: h.Worker, which: str) -> None:
    if which == "main":
        worker.kill_main()
    else:
        worker.kill_pool_child()


def _assert_ran_once(fleet: h.Fleet, ticket_id: int, row_id: int) -> None:
    ticket = h.settled(ticket_id)
    assert ticket.status == Status.EXECUTED, ticket.error
    assert ticket.rowcount == 1
    assert h.runs(fleet.owner_url, row_id) == 1  # the target's own truth: committed once, never twice
    assert h.outcome_events(ticket_id) == [EventKind.TICKET_EXECUTED]
    h.assert_audit_verifies()


def _assert_failed_without_change(fleet: h.Fleet, ticket_id: int, row_id: int) -> None:
    ticket = h.settled(ticket_id)
    assert ticket.status == Status.FAILED
    assert "nothing was changed" in ticket.error
    assert h.runs(fleet.owner_url, row_id) == 0
    assert h.outcome_events(ticket_id) == [EventKind.TICKET_FAILED]
    h.assert_audit_verifies()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("which", KILLS)
def test_killed_after_taking_the_task_before_its_claim(fleet: h.Fleet, who: h.People, which: str) -> None:
    """Before the fix: the task was acknowledged on receipt and only EXECUTING tickets were ever recovered, so
    the ticket stayed APPROVED forever."""
    row_id = h.new_counter(fleet.owner_url)
    ticket_id = h.open_ticket(who, h.increment_sql(row_id))
    fleet.stop_workers()
    assert h.approve(fleet.web_url, who, ticket_id) == 201  # its task waits in Redis for a worker
    with h.ticket_lock(ticket_id):
        worker = fleet.worker()
        h.wait_executor_at_ticket_update()  # took the task, is about to claim
        _kill(worker, which)
    assert Ticket.objects.get(pk=ticket_id).status == Status.APPROVED
    if which == "main":
        fleet.worker("restarted")
    _assert_ran_once(fleet, ticket_id, row_id)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("which", KILLS)
def test_killed_during_the_statement(fleet: h.Fleet, who: h.People, which: str) -> None:
    """Before the fix, killing only the pool child left the ticket EXECUTING until the whole worker restarted."""
    row_id = h.new_counter(fleet.owner_url)
    ticket_id = h.open_ticket(who, h.increment_sql(row_id))
    (worker,) = fleet.keep(1)
    with h.target_row_lock(fleet.owner_url, row_id):
        assert h.approve(fleet.web_url, who, ticket_id) == 201
        h.wait_statement_on_target(fleet.owner_url, row_id)
        orphans = h.statement_backends(fleet.owner_url, row_id)
        _kill(worker, which)
        h.wait_backends_gone(fleet.owner_url, orphans)  # rolled back: the client's death is noticed within 1 s
    if which == "main":
        fleet.worker("restarted")
    _assert_ran_once(fleet, ticket_id, row_id)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("which", KILLS)
def test_killed_after_the_commit_before_the_ticket_says_so(fleet: h.Fleet, who: h.People, which: str) -> None:
    """The target committed; the executor dies before its final transition. Settled from the ledger, not re-run."""
    row_id = h.new_counter(fleet.owner_url)
    ticket_id = h.open_ticket(who, h.increment_sql(row_id))
    (worker,) = fleet.keep(1)
    statement = h.target_row_lock(fleet.owner_url, row_id).acquire()
    try:
        assert h.approve(fleet.web_url, who, ticket_id) == 201
        h.wait_statement_on_target(fleet.owner_url, row_id)
        with h.ticket_lock(ticket_id):
            statement.release()  # the statement goes on and commits; the final UPDATE waits for our lock
            svc.wait_until(lambda: h.runs(fleet.owner_url, row_id) == 1, 15, what="the target to commit")
            h.wait_executor_at_ticket_update()
            _kill(worker, which)
    finally:
        statement.release()
    assert Ticket.objects.get(pk=ticket_id).status == Status.EXECUTING
    if which == "main":
        fleet.worker("restarted")
    _assert_ran_once(fleet, ticket_id, row_id)
    assert "not run again" in AuditEvent.objects.for_ticket(ticket_id).get(kind=EventKind.TICKET_EXECUTED).summary


@pytest.mark.timeout(90)
def test_a_starting_worker_leaves_a_live_execution_alone_at_the_end_of_the_window(
    fleet: h.Fleet, who: h.People
) -> None:
    """Before the fix, a worker starting while another was mid-statement after the window's end marked the ticket
    "failed: nothing was changed", and the statement then committed."""
    row_id = h.new_counter(fleet.owner_url)
    ticket_id = h.open_ticket(who, h.increment_sql(row_id))
    fleet.keep(1)
    with h.target_row_lock(fleet.owner_url, row_id):
        assert h.approve(fleet.web_url, who, ticket_id) == 201
        h.wait_statement_on_target(fleet.owner_url, row_id)
        # The statement started inside the window; the window ends while it runs.
        Ticket.objects.filter(pk=ticket_id).update(approval_valid_until=timezone.now() - timedelta(seconds=1))
        # Another approved ticket: a worker that acknowledges on receipt (as before the fix) takes it while busy,
        # so it cannot also take what the new worker queues at start.
        other_row = h.new_counter(fleet.owner_url)
        other = h.open_ticket(who, h.increment_sql(other_row))
        assert h.approve(fleet.web_url, who, other) == 201
        fleet.worker("b")
        h.pause(3)  # b's start-up sweep and a few periodic ones, from b and from a
        assert Ticket.objects.get(pk=ticket_id).status == Status.EXECUTING
    _assert_ran_once(fleet, ticket_id, row_id)
    _assert_ran_once(fleet, other, other_row)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("window", ["open", "lapsed"])
def test_two_workers_race_to_recover_at_the_end_of_the_window(fleet: h.Fleet, who: h.People, window: str) -> None:
    """The executor dies mid-statement; three sweeping workers race for the ticket (the executor's own main
    process and two others). One settles it, truthfully:
    run once while the approval is valid, failed with nothing changed (proved by the ledger) once it is not."""
    row_id = h.new_counter(fleet.owner_url)
    ticket_id = h.open_ticket(who, h.increment_sql(row_id))
    fleet.keep(3)
    with h.target_row_lock(fleet.owner_url, row_id):
        assert h.approve(fleet.web_url, who, ticket_id) == 201
        h.wait_statement_on_target(fleet.owner_url, row_id)
        if window == "lapsed":
            Ticket.objects.filter(pk=ticket_id).update(approval_valid_until=timezone.now() - timedelta(seconds=1))
        fleet.executing(ticket_id).kill_pool_child()  # its main process sweeps too: three racers
    if window == "open":
        _assert_ran_once(fleet, ticket_id, row_id)
    else:
        _assert_failed_without_change(fleet, ticket_id, row_id)
    started = AuditEvent.objects.for_ticket(ticket_id).filter(kind=EventKind.TICKET_EXECUTION_STARTED).count()
    assert started == 1


@pytest.mark.timeout(90)
def test_an_approval_during_a_redis_outage_still_executes(fleet: h.Fleet, who: h.People) -> None:
    """Before the fix, the approval committed, its enqueue failed after the commit, and nothing ever ran it."""
    row_id = h.new_counter(fleet.owner_url)
    ticket_id = h.open_ticket(who, h.increment_sql(row_id))
    fleet.keep(1)
    fleet.redis.kill()
    try:
        status = h.approve(fleet.web_url, who, ticket_id)
        assert Ticket.objects.get(pk=ticket_id).status == Status.APPROVED  # the approval itself committed
        assert status == 201, "a committed approval is answered as one, even when its enqueue failed"
    finally:
        fleet.redis.start()
    _assert_ran_once(fleet, ticket_id, row_id)


@pytest.mark.timeout(90)
def test_an_approved_copy_fails_truthfully_and_the_worker_goes_on(fleet: h.Fleet, who: h.People) -> None:
    """Before the fix, COPY ... TO STDOUT spun the pool child at 100% CPU forever (the loop never left COPY_OUT).
    Transaction control inside an approved statement is refused the same way: a COMMIT in it would commit the
    ledger row apart from the statement."""
    row_id = h.new_counter(fleet.owner_url)
    fleet.keep(1)
    refused = {
        f"COPY {h.COUNTER_TABLE} TO STDOUT": "COPY",
        f"COPY {h.COUNTER_TABLE} (id, runs) FROM STDIN": "COPY",
        f"COMMIT; {h.increment_sql(row_id)}": "transaction control",
    }
    for sql, why in refused.items():
        ticket_id = h.open_ticket(who, sql, statement_type=sql.split()[0])
        assert h.approve(fleet.web_url, who, ticket_id) == 201
        ticket = h.settled(ticket_id, timeout=20)
        assert ticket.status == Status.FAILED
        assert why in ticket.error and "nothing was changed" in ticket.error
        assert h.outcome_events(ticket_id) == [EventKind.TICKET_FAILED]
    assert h.runs(fleet.owner_url, row_id) == 0
    # The single pool child is free: the next approved statement runs.
    ticket_id = h.open_ticket(who, h.increment_sql(row_id))
    assert h.approve(fleet.web_url, who, ticket_id) == 201
    _assert_ran_once(fleet, ticket_id, row_id)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "sql",
    [
        f"COPY {h.COUNTER_TABLE} TO STDOUT",
        f"COPY {h.COUNTER_TABLE} FROM STDIN",
        f"SELECT 1; COPY {h.COUNTER_TABLE} TO STDOUT",
    ],
)
def test_the_result_loop_ends_on_copy(fleet: h.Fleet, sql: str) -> None:
    """Below the refusal: should a COPY ever reach the target, the result loop ends it as an error."""
    pgconn = statement_runner.connect(fleet.write_url, "phigate-fault-test")
    try:
        pgconn.exec_(b"BEGIN")
        with pytest.raises(statement_runner.TargetError):
            statement_runner._run_statement(pgconn, sql.encode(), row_cap=10)
        pgconn.exec_(b"ROLLBACK")
        assert pgconn.exec_(b"SELECT 1").get_value(0, 0) == b"1"  # the session is usable again
    finally:
        pgconn.finish()
