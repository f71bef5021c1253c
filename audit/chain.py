"""The hash chain over audit events, and its verification.

Writers never touch the chain. They insert events as before (ORM inside the change's transaction, or the
gateway's batch writer), each stamped by the database with its transaction id (``txid``). One sequencer at a
time (``extend_chain``, run by the executor's beat every few seconds, and before every verification and
export) appends links in ``(txid, id)`` order for events whose transaction ids lie below the *horizon*: the
oldest transaction still running anywhere in the cluster. Everything below it has committed or rolled back,
so no event can later appear before the chain's end, and the order is the same for any sequencer that runs.

Why not chain at insert time: every writer would have to lock the chain head until it commits, which
serialises all audited work (ticket approvals, reads, sign-ins) on one lock for the length of their
transactions. Here writers take no lock at all; sequencers take a transaction-level advisory lock among
themselves only. The cost is a window of a few seconds in which a new event is recorded but not yet chained.

After each pass that added links, the sequencer signs a checkpoint (audit.models.Checkpoint) with the
Ed25519 key held outside the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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
from audit.models import ChainLink, Checkpoint, CheckpointReason

SEQUENCER_LOCK = 0x70_68_69_67_61_74_65_01  # pg_advisory_xact_lock key: only sequencers contend for it
PAGE = 5_000
_COPY_LINKS = "COPY audit_chainlink (seq, event_id, event_txid, row_hash, chain_hash) FROM STDIN"


class ChainBroken(Exception):
    """The chain ends before a position that was signed: its tail was removed. Nothing is appended or signed
    on top of that (it would hide the cut); ``verify_audit`` names the problem."""


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


def extend_chain(*, checkpoint: CheckpointReason | None = CheckpointReason.PERIODIC) -> int:
    """Chain every finished event not yet chained; sign a checkpoint if anything was added. Returns the count.

    Safe to call from anywhere at any time: concurrent sequencers queue on the advisory lock, and writers are
    never blocked.
    """
    added = 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SEQUENCER_LOCK])
        head = _head(cursor)
        cursor.execute("SELECT coalesce(max(seq), 0) FROM audit_checkpoint")
        signed_up_to = cursor.fetchone()[0]
        if signed_up_to > head.seq:
            raise ChainBroken(f"the chain ends at seq {head.seq} but seq {signed_up_to} was signed")
        # Taken after the lock, so the previous sequencer's horizon is never ahead of ours.
        cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        horizon = cursor.fetchone()[0]
        seq, value, position = head.seq, head.chain_hash, (head.txid, head.event_id)
        while True:
            cursor.execute(
                f"SELECT e.txid, {EVENT_SELECT} FROM audit_auditevent e "
                "WHERE e.txid < %s AND (e.txid, e.id) > (%s, %s) ORDER BY e.txid, e.id LIMIT %s",
                [horizon, position[0], position[1], PAGE],
            )
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
    return added


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


def verify_chain() -> Verdict:
    """Check the whole chain and its checkpoints against the trusted public key; name the first problem."""
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
    orphan = _unchained_event_before_head()
    if orphan is not None:
        return fail(f"event {orphan} is older than the chain's end but not in the chain (its link was removed)", orphan)
    return Verdict(True, count, len(rows))


def _unchained_event_before_head() -> int | None:
    """An event the sequencer must already have chained, yet no link names it."""
    last = ChainLink.objects.order_by("-seq").values_list("event_txid", "event_id").first()
    if last is None:
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT e.id FROM audit_auditevent e WHERE (e.txid, e.id) < (%s, %s) "
            "AND NOT EXISTS (SELECT 1 FROM audit_chainlink l WHERE l.event_id = e.id) ORDER BY e.id LIMIT 1",
            list(last),
        )
        row = cursor.fetchone()
    return row[0] if row else None
