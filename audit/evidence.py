"""Evidence bundles: a ZIP an auditor can check offline with ``python -m audit.verify``.

Contents: ``events.jsonl`` and ``events.csv`` (the selected events, each with its chain position),
``chain.jsonl`` (every link of the covering chain segment: hashes only, and whether its event was selected),
``checkpoints.jsonl`` (the signed checkpoints that anchor the segment), ``reviews.jsonl`` (the findings and notes
of every activity review signed off in the bundle, audit.activity_review), ``report.pdf`` (for humans),
``public_key.pem``, ``manifest.json`` (the files' SHA-256 and the export's filters) and ``manifest.sig``.

Statement literals may be PHI (``WHERE ssn = '…'``), so a bundle carries statements with their literals masked
(audit.statement_text) unless a compliance officer asks for them revealed; the manifest's ``statement_literals``
says which ("masked" or "revealed"), and the export's own audit record says so too. A masked event no longer
hashes to its chain link: it is marked ``"statement_literals": "masked"``, checked against the chain here (in
its stored form, before masking; the signed manifest's chain status says so), and its masked form is covered by
the manifest's signature. Every file is written 0600 in a 0700 directory (audit.private_files).

The segment runs from the last checkpoint before the first selected event to the first checkpoint at or
after the last one; for a period that reaches the present, to the newest checkpoint, so a tail removed since
then shows. Events are streamed through temporary files: memory stays flat for any size of export.
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from audit import signing
from audit.activity_review import signed_review_documents
from audit.canonical import EVENT_FIELDS, EVENT_SELECT, manifest_message
from audit.chain import ChainBroken, extend_chain
from audit.evidence_report import EvidenceSummary, render_pdf
from audit.models import CheckpointReason, EventKind, ReviewPeriod
from audit.private_files import open_private, private_directory, write_private_bytes
from audit.recorder import Context, record
from audit.statement_text import mask_literals
from audit.verify import (
    BUNDLE_FORMAT,
    CSV_FIELDS,
    MANIFEST,
    PUBLIC_KEY,
    REVIEWS,
    SIGNATURE,
    check_reviews,
    verify_segment,
)
from identity.principal import Principal

Progress = Callable[[int, str], None]  # (percent, what is happening)
_CHUNK = 2_000
_STORED_EVENTS = "events-as-stored.jsonl"  # scratch only, never packed: the export's chain check reads it


def iso(moment: datetime) -> str:
    """The same rendering as audit.canonical's occurred_at, so filters compare as strings offline."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ExportFilters:
    since: datetime
    until: datetime
    user: str | None = None
    datasource: str | None = None

    def as_manifest(self) -> dict[str, str | None]:
        return {"since": iso(self.since), "until": iso(self.until), "user": self.user, "datasource": self.datasource}

    def where(self) -> tuple[str, list[Any]]:
        """The events of the window, and the sign-offs of the activity reviews of periods overlapping it, whenever
        they were signed (always after the period ended, so after ``since``) and whoever's they are: the review
        of a period belongs with its evidence. audit.verify's filter check says the same."""
        clauses = ["e.occurred_at >= %s", "e.occurred_at < %s"]
        params: list[Any] = [self.since, self.until]
        if self.user:
            clauses.append("e.actor_name = %s")
            params.append(self.user)
        if self.datasource:
            clauses.append("e.datasource = %s")
            params.append(self.datasource)
        # The second branch is a range on the (kind, occurred_at) index, so the OR stays two index scans.
        reviews = ["e.kind = %s", "e.occurred_at >= %s", "e.details->'period'->>'start' < %s"]
        reviews.append("e.details->'period'->>'end' > %s")
        review_params: list[Any] = [str(EventKind.AUDIT_REVIEW_SIGNED), self.since, iso(self.until), iso(self.since)]
        if self.datasource:
            reviews.append("e.datasource = %s")
            review_params.append(self.datasource)
        return f"(({' AND '.join(clauses)}) OR ({' AND '.join(reviews)}))", params + review_params


class StatementLiterals:
    """Which form of statement text a bundle carries (its manifest's ``statement_literals``)."""

    MASKED = "masked"
    REVEALED = "revealed"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    events: int
    links: int
    chain_ok: bool
    chain_status: str


def export_evidence(
    filters: ExportFilters,
    out: Path,
    *,
    requested_by: Principal | None,
    context: Context | None = None,
    progress: Progress | None = None,
    reveal_literals: bool = False,
) -> ExportResult:
    """Write the bundle to ``out``. The export is audited first: if that record cannot be written, nothing is.

    ``reveal_literals``: statements as stored, literals and all; callers allow it to compliance officers only."""
    report = progress or (lambda percent, what: None)
    literals = StatementLiterals.REVEALED if reveal_literals else StatementLiterals.MASKED
    bundle_id = f"export-{_record_export(filters, out, requested_by, context, literals)}"
    report(2, "chaining recent events")
    chain_note = ""
    try:
        extend_chain(checkpoint=CheckpointReason.EXPORT)
    except ChainBroken as exc:
        chain_note = f"the database chain is broken ({exc}); nothing new was signed"

    key = signing.signing_key()
    public_pem = signing.public_pem(key.public_key())
    public_raw = signing.public_raw(key.public_key())
    where, params = filters.where()
    summary = EvidenceSummary()
    with tempfile.TemporaryDirectory(prefix="evidence-") as scratch:
        folder = Path(scratch)
        with transaction.atomic(), connection.cursor() as cursor:
            # One snapshot for the whole export: the events, links and checkpoints agree with each other.
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor.execute(
                "SELECT count(*), min(l.seq), max(l.seq) FROM audit_auditevent e "
                f"JOIN audit_chainlink l ON l.event_id = e.id WHERE {where}",
                params,
            )
            total, low, high = cursor.fetchone()
            start_anchor, end_anchor = _anchors(cursor, low, high, reaches_present=filters.until >= timezone.now())
            sign_offs: list[dict[str, Any]] = []
            selected = _write_events(
                folder, where, params, summary, total, report, reveal_literals=reveal_literals, sign_offs=sign_offs
            )
            reviews = _write_reviews(folder, sign_offs)
            unsigned = _unsigned_reviews(filters)
            report(70, "writing the chain segment")
            links = _write_links(cursor, folder, start_anchor, end_anchor, selected)
            cursor.execute(
                "SELECT seq, chain_hash, signed_at, key_id, signature, reason FROM audit_checkpoint "
                "WHERE seq >= %s AND seq <= %s ORDER BY seq",
                [start_anchor, end_anchor],
            )
            checkpoints = [
                {
                    "seq": seq,
                    "chain_hash": bytes(value).hex(),
                    "signed_at": signed_at,
                    "key_id": kid,
                    "signature": bytes(signature).hex(),
                    "reason": reason,
                }
                for seq, value, signed_at, kid, signature, reason in cursor.fetchall()
            ]
        _write_jsonl(folder / "checkpoints.jsonl", checkpoints)

        report(80, "checking the segment")
        segment = verify_segment(
            list(_read_jsonl(folder / "chain.jsonl")),
            checkpoints,
            _read_jsonl(folder / _STORED_EVENTS),  # as stored: masked statements no longer hash to their links
            public_raw,
            start_anchor,
        )
        problems = ([chain_note] if chain_note else []) + segment.problems + check_reviews(sign_offs, reviews)
        chain_status = (
            f"verified: {segment.links} links from seq {segment.first_seq} to {segment.last_seq}, "
            f"{segment.checkpoints} signed checkpoints"
            if not problems
            else "FAILED: " + "; ".join(problems[:5])
        )
        report(85, "writing the report")
        write_private_bytes(folder / PUBLIC_KEY, public_pem)
        covered = ["events.jsonl", "events.csv", "chain.jsonl", "checkpoints.jsonl", REVIEWS, PUBLIC_KEY]
        meta = {
            "bundle id": bundle_id,
            "period": f"{iso(filters.since)} to {iso(filters.until)} (end exclusive)",
            "person": filters.user or "everyone",
            "data sources": filters.datasource or (", ".join(sorted(summary.datasources)) or "none in the events"),
            "events": total,
            "exported at": iso(timezone.now()),
            "exported by": _requester_name(requested_by),
            "signing key id": signing.signing_key_id(),
            "key fingerprint": "SHA-256 of the Ed25519 public key: " + hashlib.sha256(public_raw).hexdigest(),
            "file digests": {name: _sha256(folder / name) for name in covered},
            "chain status": chain_status,
            "reviews": {review["review"]: review for review in reviews},
            "unsigned reviews": unsigned,
        }
        write_private_bytes(folder / "report.pdf", render_pdf(summary, meta))

        files = ["events.jsonl", "events.csv", "chain.jsonl", "checkpoints.jsonl", REVIEWS, "report.pdf", PUBLIC_KEY]
        manifest = {
            "format": BUNDLE_FORMAT,
            "created_at": meta["exported at"],
            "exported_by": meta["exported by"],
            "bundle_id": bundle_id,
            "filters": filters.as_manifest(),
            "key_id": signing.signing_key_id(),
            "segment": {"start_anchor": start_anchor, "end_anchor": end_anchor},
            "chain_status": chain_status,
            "statement_literals": literals,
            "files": {name: _sha256(folder / name) for name in files},
        }
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
        signature = key.sign(manifest_message(manifest_bytes))
        report(95, "packing")
        if not out.parent.exists():
            private_directory(out.parent)
        partial = out.with_name(out.name + ".partial")
        with (
            open_private(partial, "wb") as handle,
            zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        ):
            archive.writestr(MANIFEST, manifest_bytes)
            archive.writestr(SIGNATURE, signature)
            for name in files:
                archive.write(folder / name, name)
        os.replace(partial, out)
    report(100, "done")
    return ExportResult(out, total, links, not problems, chain_status)


def _requester_name(principal: Principal | None) -> str:
    return principal.human.get_username() if principal else f"os:{getpass.getuser()}"


def _record_export(
    filters: ExportFilters, out: Path, requested_by: Principal | None, context: Context | None, literals: str
) -> int:
    """Record the export; the event's id names the bundle (its header, cover and manifest say it)."""
    details = {"filters": filters.as_manifest(), "file": out.name, "statement_literals": literals}
    summary = "evidence bundle exported" + (" (statement literals revealed)" if literals == "revealed" else "")
    with transaction.atomic():
        if requested_by is not None:
            return record(
                EventKind.AUDIT_EXPORTED,
                principal=requested_by,
                context=context,
                details=details,
                summary=summary,
            ).pk
        else:  # from a shell: name the operating-system account (see the audit_actor_required constraint)
            from audit.models import AuditEvent

            return AuditEvent.objects.create(
                kind=EventKind.AUDIT_EXPORTED,
                actor_name=f"os:{getpass.getuser()}"[:150],
                front="cli",
                summary=summary,
                details=details,
            ).pk


def _anchors(cursor: Any, low: int | None, high: int | None, *, reaches_present: bool) -> tuple[int, int]:
    """The signed positions the segment starts after and ends on."""
    cursor.execute("SELECT coalesce(max(seq), 0) FROM audit_checkpoint")
    newest = cursor.fetchone()[0]
    if low is None or high is None:  # nothing selected: an empty segment on the newest checkpoint
        return newest, newest
    cursor.execute("SELECT coalesce(max(seq), 0) FROM audit_checkpoint WHERE seq < %s", [low])
    start = cursor.fetchone()[0]
    if reaches_present:
        return start, max(newest, high)
    cursor.execute("SELECT min(seq) FROM audit_checkpoint WHERE seq >= %s", [high])
    end = cursor.fetchone()[0]
    return start, end if end is not None else high


def _write_events(
    folder: Path,
    where: str,
    params: list[Any],
    summary: EvidenceSummary,
    total: int,
    report: Progress,
    *,
    reveal_literals: bool,
    sign_offs: list[dict[str, Any]],
) -> set[int]:
    """Stream the selected events into events.jsonl and events.csv (statements masked unless revealed), and as
    stored into a scratch file the export checks against the chain; return their chain positions. Activity
    review sign-offs are also kept in ``sign_offs`` (a few per period), to bundle their reviews."""
    selected: set[int] = set()
    statement = 1 + EVENT_FIELDS.index("statement")
    with (
        open_private(folder / _STORED_EVENTS, "w", encoding="utf-8", newline="\n") as stored,
        open_private(folder / "events.jsonl", "w", encoding="utf-8", newline="\n") as jsonl,
        open_private(folder / "events.csv", "w", encoding="utf-8", newline="") as sheet,
        connection.chunked_cursor() as cursor,
    ):
        writer = csv.writer(sheet)
        writer.writerow(CSV_FIELDS)
        cursor.execute(
            f"SELECT l.seq, {EVENT_SELECT} FROM audit_auditevent e JOIN audit_chainlink l ON l.event_id = e.id "
            f"WHERE {where} ORDER BY l.seq",
            params,
        )
        done = 0
        while rows := cursor.fetchmany(_CHUNK):
            for row in rows:
                document: dict[str, Any] = {"seq": row[0], **dict(zip(EVENT_FIELDS, row[1:], strict=True))}
                document["details"] = json.loads(document["details_text"])
                stored.write(json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n")
                masked = None if reveal_literals else mask_literals(document["statement"])
                if masked is not None and masked != document["statement"]:
                    document["statement"] = masked
                    document["statement_literals"] = StatementLiterals.MASKED
                    row = (*row[:statement], masked, *row[statement + 1 :])
                jsonl.write(json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n")
                writer.writerow(["" if value is None else value for value in row])
                summary.add(document)
                selected.add(row[0])
                if document["kind"] == EventKind.AUDIT_REVIEW_SIGNED:
                    sign_offs.append(document)
            done += len(rows)
            report(5 + int(60 * done / max(total, 1)), f"{done} of {total} events written")
    return selected


def _write_reviews(folder: Path, sign_offs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """reviews.jsonl: the stored findings and notes of every review signed off by an event in the bundle, in
    the order of those events; the verifier recomputes each one's digest against its sign-off."""
    ids = [_review_id(event) for event in sign_offs]
    documents = signed_review_documents(review_id for review_id in ids if review_id is not None)
    reviews = []
    for review_id in ids:
        review = documents.pop(review_id, None) if review_id is not None else None
        if review is not None:
            reviews.append(review)
    _write_jsonl(folder / REVIEWS, reviews)
    return reviews


def _review_id(sign_off: dict[str, Any]) -> int | None:
    review = (sign_off.get("details") or {}).get("review")
    return review if isinstance(review, int) else None


def _unsigned_reviews(filters: ExportFilters) -> list[dict[str, str]]:
    """Periods overlapping the window that are not signed off (yet): the report says so, with their status."""
    periods = ReviewPeriod.objects.overlapping(filters.since, filters.until).unsigned().order_by("starts_at")
    if filters.datasource:
        periods = periods.filter(datasource=filters.datasource)
    now = timezone.now()
    return [
        {
            "datasource": period.datasource,
            "period_start": iso(period.starts_at),
            "period_end": iso(period.ends_at),
            "status": period.status(now).label,
        }
        for period in periods[:500]
    ]


def _write_links(cursor: Any, folder: Path, start: int, end: int, selected: set[int]) -> int:
    count = 0
    with open_private(folder / "chain.jsonl", "w", encoding="utf-8", newline="\n") as out:
        position = start
        while position < end:
            cursor.execute(
                "SELECT l.seq, l.event_id, l.row_hash, l.chain_hash, e.id IS NOT NULL FROM audit_chainlink l "
                "LEFT JOIN audit_auditevent e ON e.id = l.event_id WHERE l.seq > %s AND l.seq <= %s "
                "ORDER BY l.seq LIMIT %s",
                [position, end, 20_000],
            )
            rows = cursor.fetchall()
            if not rows:
                break
            for seq, event_id, row, value, present in rows:
                state = "missing" if not present else "included" if seq in selected else "excluded"
                link = {
                    "seq": seq,
                    "event_id": event_id,
                    "row_hash": bytes(row).hex(),
                    "chain_hash": bytes(value).hex(),
                    "state": state,
                }
                out.write(json.dumps(link, separators=(",", ":")) + "\n")
            count += len(rows)
            position = rows[-1][0]
    return count


def _write_jsonl(path: Path, items: list[dict[str, Any]]) -> None:
    with open_private(path, "w", encoding="utf-8", newline="\n") as out:
        for item in items:
            out.write(json.dumps(item, separators=(",", ":")) + "\n")


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
