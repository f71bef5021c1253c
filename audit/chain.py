"""The hash chain over audit events, and its verification.

Writers never touch the chain. They insert events as before (ORM inside the change's transaction, or the
gateway's journal shipper and batch writer), each stamped by the database with its transaction id (``txid``).
One sequencer at a time (``extend_chain``, run by the executor's beat every few seconds, and before every
verification and export) appends a link for every event that has *committed* since its last pass, in
``(txid, id)`` order within the pass. An event's place in the chain is the moment the sequencer first saw it
committed, not its transaction's age: so no event can ever appear before the chain's end, and no transaction
can hold chaining back, whatever it is and wherever it runs.

Why not "everything below the oldest running transaction" (the design before issue 15): the oldest running
transaction is cluster-wide. An agent's ``BEGIN; SELECT txid_current();`` held open through the gateway
(the target database, even a target on the same cluster), or any other long transaction, froze chaining for
as long as it stayed open, and an event deleted meanwhile was never noticed. Narrowing that horizon to the
control plane's own backends still lets an unrelated control-plane transaction freeze it, and narrowing it
to "transactions that wrote an event" is unsound: a transaction can take its id long before it inserts.

How each pass finds what committed since the last one, without scanning the table: the pass takes the
cluster's snapshot (``pg_current_snapshot()``): ``xmax``, below which every transaction id was handed out,
and ``xip``, the ones of those still running. Its cursor (``ChainCursor``) keeps both. The next pass looks at
exactly the events whose txid is in the last ``xip`` (those may have committed since) or lies between the
last ``xmax`` and the new one, and keeps those not yet linked. Any transaction below the new ``xmax`` and not
in the new ``xip`` has finished, and the statement that reads the events takes its snapshot after the one
that defined the range, so a finished transaction's events are all visible to it; a transaction still running
is in the new ``xip`` and is looked at again next time. The sequencer's own transaction is never in its own
snapshot's ``xip``, so it is added: when ``extend_chain`` runs inside a transaction that records events
later (an export, a purge), those are found by the next pass. Nothing is missed; the "not yet linked" test
(the unique link per event) makes a second look harmless.

Why not chain at insert time: every writer would have to lock the chain head until it commits, which
serialises all audited work (ticket approvals, reads, sign-ins) on one lock for the length of their
transactions. Here writers take no lock at all; sequencers take a transaction-level advisory lock among
themselves only. The cost is a window of a few seconds in which a new event is recorded but not yet chained.

That window is where an event could be deleted unnoticed, so it is watched (``verify_chain``): each pass signs
its cursor with the checkpoint key (held outside the database), including when it passed and how far the
event id sequence had gone. An event the cursor says was passed but that has no link is reported at once; a
sequencer that has not passed for longer than ``AUDIT_UNCHAINED_BOUND_SECONDS`` while events were written
(events waiting unchained, or ids drawn since its mark, some of which may have been deleted) is reported as a
failure, and nobody without the key can make its last pass look more recent.

After each pass that added links, the sequencer signs a checkpoint (audit.models.Checkpoint) with the
Ed25519 key held outside the database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit import signing
from audit.canonical import (
    EVENT_SELECT,
    GENESIS,
    chain_hash,
    checkpoint_message,
    key_id,
    row_hash,
    verify_signature,
)
from audit.models import Checkpoint, CheckpointReason

SEQUENCER_LOCK = 0x70_68_69_67_61_74_65_01  # pg_advisory_xact_lock key: only sequencers contend for it
PAGE = 5_000
_MAX_ID = 2**63 - 1
_COPY_LINKS = "COPY audit_chainlink (seq, event_id, event_txid, row_hash, chain_hash) FROM STDIN"
CURSOR_DOMAIN = "phigate.audit.sequencer.v1"
# The event id sequence's last value (0 before the first event): how far ids have been handed out.
_ID_MARK = "coalesce(pg_sequence_last_value(pg_get_serial_sequence('audit_auditevent', 'id')::regclass), 0)"
# The next page of events committed since the last pass: those of the transactions it saw running, and those
# of transactions started since, each part an index range scan on (txid, id) from the page's position (one
# scan with an OR would walk the index from its start, filtering; so would a row comparison next to a plain
# lower bound, hence the second part's start is one row value). A txid in both parts (the sequencer's own) is
# taken from the first. "Not yet linked": a transaction seen running may have committed before that pass read
# the events, and a first pass (no cursor) looks at everything.
_UNLINKED = "NOT EXISTS (SELECT 1 FROM audit_chainlink l WHERE l.event_id = e.id)"
_NEXT_PAGE = f"""
SELECT * FROM (
    (SELECT e.txid, {EVENT_SELECT} FROM audit_auditevent e
     WHERE e.txid = ANY(%s) AND (e.txid, e.id) > (%s, %s) AND {_UNLINKED} ORDER BY e.txid, e.id LIMIT %s)
    UNION ALL
    (SELECT e.txid, {EVENT_SELECT} FROM audit_auditevent e
     WHERE (e.txid, e.id) > (%s, %s) AND e.txid < %s AND e.txid <> ALL(%s) AND {_UNLINKED}
     ORDER BY e.txid, e.id LIMIT %s)
) AS page ORDER BY 1, 2 LIMIT %s
"""
_DB_CLOCK = """to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


class ChainBroken(Exception):
    """The chain ends before a position that was signed: its tail was removed. Nothing is appended or signed
    on top of that (it would hide the cut); ``verify_audit`` names the problem."""


class SequencerBusy(Exception):
    """Another sequencer held the lock for longer than the caller would wait (it may be stuck)."""


@dataclass(frozen=True)
class ChainHead:
    seq: int
    chain_hash: bytes
    txid: int
    event_id: int


def _head(cursor) -> ChainHead:  # type: ignore[no-untyped-def]
    cursor.execute("SELECT seq, chain_hash, event_txid, event_id FROM audit_chainlink ORDER BY seq DESC LIMIT 1")
    row = cursor.fetchone()
    if row is not None:
        return ChainHead(row[0], bytes(row[1]), row[2], row[3])
    # Nothing chained yet (or everything was purged): start after the newest checkpoint, if any.
    cursor.execute("SELECT seq, chain_hash FROM audit_checkpoint ORDER BY seq DESC LIMIT 1")
    anchor = cursor.fetchone()
    if anchor is not None:
        return ChainHead(anchor[0], bytes(anchor[1]), -1, -1)
    return ChainHead(0, GENESIS, -1, -1)


def cursor_message(scanned_below: int, in_flight: Sequence[int], id_mark: int, passed_at: str) -> bytes:
    """What the signature of a sequencer pass covers."""
    running = ",".join(str(txid) for txid in in_flight)
    return f"{CURSOR_DOMAIN}\n{scanned_below}\n{running}\n{id_mark}\n{passed_at}\n".encode("ascii")


def _take_lock(cursor, wait: float | None) -> None:  # type: ignore[no-untyped-def]
    if wait is None:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SEQUENCER_LOCK])
        return
    deadline = time.monotonic() + wait
    while True:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [SEQUENCER_LOCK])
        if cursor.fetchone()[0]:
            return
        if time.monotonic() >= deadline:
            raise SequencerBusy(f"another sequencer has held the chain's lock for over {wait:g} s")
        time.sleep(0.05)


def extend_chain(*, checkpoint: CheckpointReason | None = CheckpointReason.PERIODIC, wait: float | None = None) -> int:
    """Chain every event committed since the last pass; sign a checkpoint if anything was added. Returns the count.

    Safe to call from anywhere at any time: concurrent sequencers queue on the advisory lock (for at most
    ``wait`` seconds when given, then SequencerBusy), and writers are never blocked.
    """
    added = 0
    with transaction.atomic(), connection.cursor() as cursor:
        _take_lock(cursor, wait)
        head = _head(cursor)
        cursor.execute("SELECT coalesce(max(seq), 0) FROM audit_checkpoint")
        signed_up_to = cursor.fetchone()[0]
        if signed_up_to > head.seq:
            raise ChainBroken(f"the chain ends at seq {head.seq} but seq {signed_up_to} was signed")
        cursor.execute(
            "SELECT scanned_below, in_flight, id_mark, "
            "extract(epoch FROM clock_timestamp() - passed_at::timestamptz)::float FROM audit_chaincursor WHERE id = 1"
        )
        previous = cursor.fetchone()
        low, recheck = (previous[0], list(previous[1])) if previous else (0, [])  # no cursor yet: every event
        # The id mark first: an id handed out after it belongs to an event this pass may not see.
        cursor.execute(f"SELECT {_ID_MARK}")
        id_mark = cursor.fetchone()[0]
        # Taken after the lock, so the previous pass's snapshot is never ahead of ours.
        cursor.execute(
            "SELECT pg_snapshot_xmax(s)::text::bigint, "
            "ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) AS x ORDER BY 1), "
            "pg_current_xact_id_if_assigned()::text::bigint FROM pg_current_snapshot() AS s"
        )
        high, running, own = cursor.fetchone()
        in_flight = sorted({*running, *([own] if own is not None else [])})
        seq, value, position = head.seq, head.chain_hash, (-1, -1)
        while True:
            start = max(position, (low - 1, _MAX_ID))  # (txid, id) > start: txid >= low, and after the page
            cursor.execute(_NEXT_PAGE, [recheck, *position, PAGE, *start, high, recheck, PAGE, PAGE])
            rows = cursor.fetchall()
            if not rows:
                break
            links = []
            for row in rows:
                seq += 1
                digest = row_hash(row[1:])
                value = chain_hash(value, digest)
                links.append((seq, row[1], row[0], digest, value))
            with cursor.cursor.copy(_COPY_LINKS) as copy:  # the psycopg cursor under Django's wrapper
                for link in links:
                    copy.write_row(link)
            added += len(links)
            position = (rows[-1][0], rows[-1][1])
            if len(rows) < PAGE:
                break
            if checkpoint is not None:
                # A long pass (a backlog) still gets a signed position every PAGE links, so an evidence
                # bundle's segment never has to reach far beyond the events it holds.
                sign_checkpoint(cursor, seq, value, checkpoint)
        if checkpoint is not None and (added or checkpoint != CheckpointReason.PERIODIC) and seq > 0:
            sign_checkpoint(cursor, seq, value, checkpoint)
        # An idle pass (nothing chained, no id handed out since) keeps the last cursor, but for a heartbeat at
        # half the bound: from an older cursor the next pass looks at a superset of what it would from ours, and
        # a running sequencer's last pass never looks older than the bound, whatever commits late.
        heartbeat = previous is not None and previous[3] > settings.AUDIT_UNCHAINED_BOUND_SECONDS / 2
        if added or previous is None or id_mark != previous[2] or heartbeat:
            _save_cursor(cursor, high, in_flight, id_mark)
    return added


def _save_cursor(cursor, scanned_below: int, in_flight: list[int], id_mark: int) -> None:  # type: ignore[no-untyped-def]
    """Record (signed) where this pass left off; committed with its links or not at all."""
    cursor.execute(f"SELECT {_DB_CLOCK}")
    passed_at = cursor.fetchone()[0]
    signature = signing.signing_key().sign(cursor_message(scanned_below, in_flight, id_mark, passed_at))
    cursor.execute(
        "INSERT INTO audit_chaincursor (id, scanned_below, in_flight, id_mark, passed_at, key_id, signature) "
        "VALUES (1, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET scanned_below = excluded.scanned_below, "
        "in_flight = excluded.in_flight, id_mark = excluded.id_mark, passed_at = excluded.passed_at, "
        "key_id = excluded.key_id, signature = excluded.signature",
        [scanned_below, in_flight, id_mark, passed_at, signing.signing_key_id(), signature],
    )


def sign_checkpoint(cursor, seq: int, value: bytes, reason: CheckpointReason) -> None:  # type: ignore[no-untyped-def]
    """Sign the chain value at ``seq`` (once: a second checkpoint at the same position is not needed)."""
    key = signing.signing_key()
    signed_at = timezone.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    signature = key.sign(checkpoint_message(seq, value, signed_at, str(reason)))
    cursor.execute(
        "INSERT INTO audit_checkpoint (seq, chain_hash, signed_at, key_id, signature, reason) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (seq, reason) DO NOTHING",
        [seq, value, signed_at, signing.signing_key_id(), signature, str(reason)],
    )


# --------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    ok: bool
    links: int
    checkpoints: int
    problem: str = ""
    event_id: int | None = None


def _links(batch: int = 20_000) -> Iterator[tuple]:  # type: ignore[type-arg]
    """Every link with its event's hashable fields (None where the event row is gone), in chain order."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM audit_chainlink")
        low, high = cursor.fetchone()
        start = low
        while start and start <= high:
            cursor.execute(
                f"SELECT l.seq, l.event_id, l.row_hash, l.chain_hash, e.id IS NOT NULL, {EVENT_SELECT} "
                "FROM audit_chainlink l LEFT JOIN audit_auditevent e ON e.id = l.event_id "
                "WHERE l.seq >= %s AND l.seq < %s ORDER BY l.seq",
                [start, start + batch],
            )
            yield from cursor.fetchall()
            start += batch


def verify_chain(*, unchained_bound: float | None = None) -> Verdict:
    """Check the whole chain and its checkpoints against the trusted public key, and that nothing is left
    unchained: no event the sequencer has passed, nor (beyond ``unchained_bound`` seconds, by default
    AUDIT_UNCHAINED_BOUND_SECONDS) events written while it was not passing. Names the first problem."""
    public_raw = signing.public_raw(signing.trusted_public_key())
    trusted_id = key_id(public_raw)
    rows = list(Checkpoint.objects.values_list("seq", "chain_hash", "signed_at", "key_id", "signature", "reason"))
    count = 0

    def fail(problem: str, event_id: int | None = None) -> Verdict:
        return Verdict(False, count, len(rows), problem, event_id)

    checkpoints: dict[int, bytes] = {}
    purge_anchors: set[int] = set()
    for seq, value, signed_at, kid, signature, reason in sorted(rows):
        message = checkpoint_message(seq, bytes(value), signed_at, reason)
        if kid != trusted_id or not verify_signature(public_raw, bytes(signature), message):
            return fail(f"checkpoint at seq {seq} has an invalid signature")
        if checkpoints.setdefault(seq, bytes(value)) != bytes(value):
            return fail(f"two checkpoints at seq {seq} sign different values")
        if reason == CheckpointReason.PURGE:
            purge_anchors.add(seq)

    expected_seq: int | None = None
    value = GENESIS
    last_event: int | None = None
    for seq, event_id, stored_row, stored_chain, present, *fields in _links():
        if expected_seq is None:
            if seq != 1:
                anchor = checkpoints.get(seq - 1)
                if anchor is None:
                    return fail(
                        f"the chain starts at seq {seq} with no signed checkpoint at seq {seq - 1}: "
                        "its beginning was removed",
                        event_id,
                    )
                value = anchor
        elif seq != expected_seq:
            return fail(f"links {expected_seq}..{seq - 1} are missing (before event {event_id})", event_id)
        if not present:
            return fail(f"event {event_id} (seq {seq}) was deleted", event_id)
        digest = row_hash(fields)
        if digest != bytes(stored_row):
            return fail(f"event {event_id} (seq {seq}) was altered", event_id)
        value = chain_hash(value, digest)
        if value != bytes(stored_chain):
            return fail(
                f"the chain breaks at event {event_id} (seq {seq}): links were reordered, removed "
                "or inserted before it",
                event_id,
            )
        signed = checkpoints.get(seq)
        if signed is not None and signed != value:
            return fail(f"event {event_id} (seq {seq}) does not match the signed checkpoint at seq {seq}", event_id)
        expected_seq, last_event, count = seq + 1, event_id, count + 1

    if expected_seq is not None:
        chained_to = expected_seq - 1
    else:  # no links at all: legitimate only when a purge removed everything up to the newest checkpoint
        newest = max(checkpoints, default=0)
        chained_to = newest if newest in purge_anchors else 0
    beyond = [seq for seq in checkpoints if seq > chained_to]
    if beyond:
        return fail(
            f"a checkpoint signed seq {max(beyond)} but the chain ends at seq {chained_to}: "
            "events were removed from the tail",
            last_event,
        )
    bound = settings.AUDIT_UNCHAINED_BOUND_SECONDS if unchained_bound is None else unchained_bound
    unchained = _unchained_problem(bound, public_raw, trusted_id)
    if unchained is not None:
        return fail(*unchained)
    return Verdict(True, count, len(rows))


# The events without a link, compared with the sequencer's cursor, in one statement: the cursor and the links
# are seen at the same moment (a pass committing in between cannot make a chained event look skipped).
_WATCH = f"""
WITH c AS (
    SELECT scanned_below, in_flight, id_mark, passed_at, key_id, signature,
           extract(epoch FROM clock_timestamp() - passed_at::timestamptz)::float AS age
    FROM audit_chaincursor WHERE id = 1
), u AS (
    SELECT e.id, e.txid, e.occurred_at FROM audit_auditevent e
    WHERE NOT EXISTS (SELECT 1 FROM audit_chainlink l WHERE l.event_id = e.id)
)
SELECT
    (SELECT min(u.id) FROM u, c WHERE u.txid < c.scanned_below AND u.txid <> ALL(c.in_flight)),
    (SELECT count(*) FROM u),
    (SELECT min(u.id) FROM u),
    (SELECT count(*) FROM u WHERE u.occurred_at < clock_timestamp() - make_interval(secs => %s)),
    (SELECT min(u.id) FROM u WHERE u.occurred_at < clock_timestamp() - make_interval(secs => %s)),
    {_ID_MARK},
    (SELECT count(*) FROM audit_auditevent e, c WHERE e.id > c.id_mark),
    c.scanned_below, c.in_flight, c.id_mark, c.passed_at, c.key_id, c.signature, c.age
FROM (SELECT 1) AS one LEFT JOIN c ON true
"""


def _unchained_problem(bound: float, public_raw: bytes, trusted_id: str) -> tuple[str, int | None] | None:
    """What is wrong with the events not (yet) in the chain, judged by the sequencer's signed cursor.

    An event the last pass had to see but did not link was skipped or lost its link: reported at once. Events
    committed since the last pass are normal for a few seconds; once that pass is older than ``bound`` while
    events were written (some wait unchained, or ids were handed out since its mark, whose events may have
    been deleted before anyone chained them), the sequencer is stalled and the window is unprotected.
    """
    with connection.cursor() as cursor:
        cursor.execute(_WATCH, [bound, bound])
        (passed_unlinked, waiting, oldest_waiting, overdue, oldest_overdue, ids_now, written_since, *pass_row) = (
            cursor.fetchone()
        )
    scanned_below, in_flight, id_mark, passed_at, kid, signature, age = pass_row
    if scanned_below is None:  # the sequencer has never passed (since the upgrade that added its cursor)
        if overdue:
            return (
                f"{overdue} events older than {bound:g} s are left unchained (oldest: event {oldest_overdue}) and "
                "the sequencer has never passed: a deletion among them would go unnoticed",
                oldest_overdue,
            )
        return None
    message = cursor_message(scanned_below, in_flight, id_mark, passed_at)
    if kid != trusted_id or not verify_signature(public_raw, bytes(signature), message):
        return "the sequencer's cursor (its last pass) does not match its signature: it was altered", None
    if passed_unlinked is not None:
        return (
            f"event {passed_unlinked} is not in the chain although the sequencer passed it "
            "(its link was removed, or it was skipped)",
            passed_unlinked,
        )
    drawn = max(ids_now - id_mark, 0)
    if age > bound and (waiting or drawn):
        absent = drawn - written_since
        return (
            f"events are left unchained: the sequencer last passed at {passed_at}, {age:.0f} s ago (bound "
            f"{bound:g} s); {waiting} events wait unchained"
            + (f" (oldest: event {oldest_waiting})" if oldest_waiting is not None else "")
            + f", {drawn} event ids were handed out since then and {max(absent, 0)} of those are not in the table "
            "(rolled back, still uncommitted, or deleted before they were chained)",
            oldest_waiting,
        )
    return None
