"""The byte-exact form of an audit event, and the hashes and signatures built on it.

Shared by the database side (chaining, ``verify_audit``, export) and by ``python -m audit.verify``, which runs
on an auditor's machine with no Django and no database: so this module imports only the standard library
(and ``cryptography`` where a signature is checked).

An event is hashed as a compact JSON array of its fields in a fixed order, every value a string, an integer or
null. ``details`` enters as PostgreSQL's own text rendering of the jsonb value, carried verbatim into the
bundle, so nobody has to reproduce a JSON serializer exactly to check a hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

# The order is part of the format: changing it is a new version of EVENT_DOMAIN.
EVENT_FIELDS = (
    "id",
    "occurred_at",  # UTC, ISO 8601 with microseconds and a trailing Z
    "kind",
    "outcome",
    "actor_id",
    "actor_name",
    "agent_id",
    "agent_name",
    "datasource",
    "ticket_id",
    "front",
    "source_address",
    "session_id",
    "statement",
    "summary",
    "details_text",
)
EVENT_DOMAIN = b"phigate.audit.event.v1\n"
CHECKPOINT_DOMAIN = "phigate.audit.checkpoint.v1"
MANIFEST_DOMAIN = "phigate.audit.bundle.v1"
GENESIS = bytes(32)  # the chain value before the first event

# The same fields as SQL over audit_auditevent, rendered so Python needs no conversion to hash them.
EVENT_SELECT = """
    e.id,
    to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    e.kind, e.outcome, e.actor_id, e.actor_name, e.agent_id, e.agent_name, e.datasource, e.ticket_id,
    e.front, host(e.source_address), e.session_id, e.statement, e.summary, e.details::text
"""


def canonical_event(values: Sequence[Any]) -> bytes:
    """The hashed form of one event, from its EVENT_FIELDS values in order."""
    if len(values) != len(EVENT_FIELDS):
        raise ValueError(f"an event has {len(EVENT_FIELDS)} fields, got {len(values)}")
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def event_values(document: Mapping[str, Any]) -> list[Any]:
    """EVENT_FIELDS values of an exported event document (a JSONL line)."""
    return [document[name] for name in EVENT_FIELDS]


def row_hash(values: Sequence[Any]) -> bytes:
    return hashlib.sha256(EVENT_DOMAIN + canonical_event(values)).digest()


def chain_hash(previous: bytes, row: bytes) -> bytes:
    """Each link commits to everything before it: removing, inserting or reordering changes all that follow."""
    return hashlib.sha256(previous + row).digest()


def checkpoint_message(seq: int, chain_value: bytes, signed_at: str, reason: str) -> bytes:
    """What a checkpoint's Ed25519 signature covers (the reason too: a purge anchor may end the chain)."""
    return f"{CHECKPOINT_DOMAIN}\n{seq}\n{chain_value.hex()}\n{signed_at}\n{reason}\n".encode("ascii")


def manifest_message(manifest_bytes: bytes) -> bytes:
    return MANIFEST_DOMAIN.encode("ascii") + b"\n" + manifest_bytes


def key_id(public_key_raw: bytes) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def verify_signature(public_key_raw: bytes, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# An activity review as its sign-off certifies it (audit.activity_review): the period, and every finding with
# its facts and the reviewer's disposition and note. The order of the fields is part of the format.
REVIEW_DOMAIN = b"phigate.audit.review.v1\n"
REVIEW_FIELDS = ("review", "datasource", "period_start", "period_end")
REVIEW_FINDING_FIELDS = (
    "key",
    "kind",
    "subject_name",
    "agent_name",
    "summary",
    "event_count",
    "first_at",
    "last_at",
    "event_ids",
    "disposition",
    "note",
    "noted_by_name",
    "noted_at",
)


def review_digest(review: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a review document (a ``reviews.jsonl`` line): what the sign-off event carries, so an
    auditor recomputes it offline and a note changed after the sign-off shows."""
    findings = sorted(review["findings"], key=lambda finding: str(finding["key"]))
    document = [
        *(review[name] for name in REVIEW_FIELDS),
        [[finding[name] for name in REVIEW_FINDING_FIELDS] for finding in findings],
    ]
    encoded = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(REVIEW_DOMAIN + encoded).hexdigest()
