"""``python -m audit.verify BUNDLE.zip``: check an evidence bundle offline, with no database and no settings.

Exit 0 and a summary when everything holds; exit 1 with the reason otherwise. What is checked:

1. ``manifest.json`` is signed (``manifest.sig``) by the bundled public key; with ``--key-id`` or
   ``--public-key`` that key must also be the one you trust (otherwise its id is printed for you to compare
   with the one your organisation publishes).
2. Every file listed in the manifest has the listed SHA-256, and nothing else is in the archive.
3. The chain segment (``chain.jsonl``) is contiguous, starts at genesis or at a signed checkpoint, recomputes
   link by link, matches every signed checkpoint it passes (``checkpoints.jsonl``), and ends on one.
4. Each event (``events.jsonl``) hashes to its link's row hash, matches the export's filters, and every link
   the export selected has its event; the CSV says the same as the JSONL. An event whose statement literals
   were masked for the bundle (``"statement_literals": "masked"``, allowed only when the manifest says the
   bundle is masked) cannot be rehashed: it is checked for its place in the chain, and its content is vouched
   for by the exporter's own check of the stored form (the signed ``chain_status``) and the manifest signature.
   A bundle exported with literals revealed is rehashed in full.
5. Every activity review signed off by an event in the bundle (``audit.review_signed``, chained and hashed like
   any event) is in ``reviews.jsonl``, and its findings and notes hash to the digest that event certified: a
   note or finding changed after the sign-off, or a sign-off edited, is named. The export's filters take, besides
   the window's events, the sign-offs of the periods overlapping it, whenever they were signed.

Imports only the standard library and ``cryptography``: an auditor can run it from a copy of this one package.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from audit.canonical import (
    EVENT_FIELDS,
    GENESIS,
    chain_hash,
    checkpoint_message,
    event_values,
    key_id,
    manifest_message,
    review_digest,
    row_hash,
    verify_signature,
)

BUNDLE_FORMAT = "phigate-evidence/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PUBLIC_KEY = "public_key.pem"
REQUIRED_FILES = ("events.jsonl", "events.csv", "report.pdf", "chain.jsonl", "checkpoints.jsonl", PUBLIC_KEY)
CSV_FIELDS = ("seq", *EVENT_FIELDS)
REVIEWS = "reviews.jsonl"  # listed by bundles made since the activity review (issue 16); optional before
REVIEW_SIGNED = "audit.review_signed"


class BundleInvalid(Exception):
    """The first reason the bundle cannot be trusted."""


@dataclass
class SegmentReport:
    links: int = 0
    events: int = 0
    checkpoints: int = 0
    first_seq: int = 0
    last_seq: int = 0
    masked: int = 0  # events whose masked statement was not rehashed
    problems: list[str] = field(default_factory=list)


def verify_segment(
    links: Sequence[Mapping[str, Any]],
    checkpoints: Sequence[Mapping[str, Any]],
    events: Iterable[Mapping[str, Any]],
    public_key_raw: bytes,
    start_anchor: int,
    *,
    masked_allowed: bool = False,
) -> SegmentReport:
    """The chain checks shared by the offline verifier and the exporter (whose report states the result).

    ``start_anchor`` is the position before the first link: 0 (genesis) or the seq of a signed checkpoint.
    Problems are collected, not raised, so a report can list them; the verifier fails on the first.
    """
    report = SegmentReport(links=len(links), checkpoints=len(checkpoints))
    problems = report.problems
    signed: dict[int, bytes] = {}
    for checkpoint in checkpoints:
        seq, value = int(checkpoint["seq"]), bytes.fromhex(checkpoint["chain_hash"])
        message = checkpoint_message(seq, value, checkpoint["signed_at"], checkpoint["reason"])
        if checkpoint.get("key_id") != key_id(public_key_raw) or not verify_signature(
            public_key_raw, bytes.fromhex(checkpoint["signature"]), message
        ):
            problems.append(f"checkpoint at seq {seq} has an invalid signature")
        signed[seq] = value

    if start_anchor == 0:
        value = GENESIS
    elif start_anchor in signed:
        value = signed[start_anchor]
    else:
        problems.append(f"the segment starts after seq {start_anchor}, which no signed checkpoint covers")
        value = GENESIS
    expected = start_anchor + 1
    row_hashes: dict[int, tuple[str, int, str]] = {}
    for link in links:
        seq = int(link["seq"])
        if seq != expected:
            problems.append(f"links {expected}..{seq - 1} are missing from the chain segment")
        value = chain_hash(value, bytes.fromhex(link["row_hash"]))
        if value.hex() != link["chain_hash"]:
            problems.append(f"the chain breaks at seq {seq} (event {link['event_id']})")
            value = bytes.fromhex(link["chain_hash"])  # go on from the stored value to find more problems
        if seq in signed and signed[seq] != value:
            problems.append(f"seq {seq} (event {link['event_id']}) does not match its signed checkpoint")
        if link["state"] == "missing":
            problems.append(f"event {link['event_id']} (seq {seq}) was deleted from the database")
        row_hashes[seq] = (link["row_hash"], int(link["event_id"]), link["state"])
        expected = seq + 1
    last = expected - 1
    report.first_seq, report.last_seq = start_anchor + 1, last
    ends_signed = last == start_anchor or last in signed
    if not ends_signed:
        problems.append(f"the segment ends at seq {last}, which no signed checkpoint covers")
    beyond = [seq for seq in signed if seq > last]
    if beyond:
        problems.append(
            f"a checkpoint signed seq {max(beyond)} but the chain segment ends at seq {last}: "
            "events were removed from the tail"
        )

    seen: set[int] = set()
    for event in events:
        report.events += 1
        seq = int(event["seq"])
        link_info = row_hashes.get(seq)
        if link_info is None:
            problems.append(f"event {event.get('id')} claims seq {seq}, which is not in the chain segment")
            continue
        stored_row, event_id, state = link_info
        if event_id != event["id"] or state != "included":
            problems.append(f"event {event['id']} is not the event the chain has at seq {seq}")
        if event.get("statement_literals") == "masked":
            if not masked_allowed:
                problems.append(f"event {event['id']} is marked masked in a bundle that says it is not")
            report.masked += 1
        elif row_hash(event_values(event)).hex() != stored_row:
            problems.append(f"event {event['id']} (seq {seq}) does not match its hash in the chain")
        if json.loads(event["details_text"]) != event.get("details"):
            problems.append(f"event {event['id']}: details differ from the hashed details_text")
        seen.add(seq)
    for seq, (_, event_id, state) in row_hashes.items():
        if state == "included" and seq not in seen:
            problems.append(f"event {event_id} (seq {seq}) was selected by the export but is not in it")
    return report


def check_reviews(sign_offs: Iterable[Mapping[str, Any]], reviews: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each activity review sign-off among the events against its review in ``reviews.jsonl`` (shared by the
    exporter, whose chain status states the result, and the offline verifier)."""
    problems: list[str] = []
    by_id: dict[Any, Mapping[str, Any]] = {}
    for review in reviews:
        if review.get("review") in by_id:
            problems.append(f"{REVIEWS} holds activity review {review.get('review')} twice")
        by_id[review.get("review")] = review
    signed: set[Any] = set()
    for event in sign_offs:
        if event.get("kind") != REVIEW_SIGNED:
            continue
        details = event.get("details") or {}
        review_id = details.get("review")
        found = by_id.get(review_id)
        if found is None:
            problems.append(f"activity review {review_id} signed off by event {event['id']} is not in {REVIEWS}")
            continue
        review = found
        signed.add(review_id)
        period = details.get("period") or {}
        try:
            digest = review_digest(review)
        except (KeyError, TypeError):
            problems.append(f"activity review {review_id} in {REVIEWS} is malformed")
            continue
        if digest != details.get("digest"):
            problems.append(
                f"activity review {review_id} ({review.get('datasource')}, {review.get('period_start')} to "
                f"{review.get('period_end')}) does not match the digest its sign-off (event {event['id']}) "
                "certified: a finding or note changed after the sign-off"
            )
        elif (review.get("datasource"), review.get("period_start"), review.get("period_end")) != (
            event.get("datasource"),
            period.get("start"),
            period.get("end"),
        ):
            problems.append(f"activity review {review_id} is not the period its sign-off (event {event['id']}) names")
        else:
            counts = {"total": 0, "explained": 0, "follow_up": 0}
            for finding in review["findings"]:
                counts["total"] += 1
                if finding["disposition"] in counts:
                    counts[finding["disposition"]] += 1
            if counts != details.get("findings"):
                problems.append(f"activity review {review_id}: its sign-off's counts differ from its findings")
    for review_id in by_id.keys() - signed:
        problems.append(f"{REVIEWS} holds activity review {review_id}, whose sign-off is not among the events")
    return problems


def _is_review_of_window(event: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """A sign-off of an activity review whose period overlaps the window (audit.evidence.ExportFilters.where)."""
    if event.get("kind") != REVIEW_SIGNED or not filters.get("since") or not filters.get("until"):
        return False
    period = (event.get("details") or {}).get("period") or {}
    start, end = str(period.get("start") or ""), str(period.get("end") or "")
    return (
        event["occurred_at"] >= filters["since"]
        and bool(start)
        and bool(end)
        and start < filters["until"]
        and end > filters["since"]
        and not (filters.get("datasource") and event["datasource"] != filters["datasource"])
    )


def _matches_filters(event: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    return _in_window(event, filters) or _is_review_of_window(event, filters)


def _in_window(event: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    moment = event["occurred_at"]
    if filters.get("since") and moment < filters["since"]:
        return False
    if filters.get("until") and moment >= filters["until"]:
        return False
    if filters.get("user") and event["actor_name"] != filters["user"]:
        return False
    return not (filters.get("datasource") and event["datasource"] != filters["datasource"])


def _jsonl(data: bytes, name: str) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleInvalid(f"{name} is not valid JSON lines: {exc}") from exc


def _public_key_raw(pem: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise BundleInvalid(f"{PUBLIC_KEY} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BundleInvalid(f"{PUBLIC_KEY} is not an Ed25519 key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_bundle(path: str, trusted_key_id: str | None = None) -> str:
    """Check everything; return a one-paragraph summary, or raise BundleInvalid with the first problem."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleInvalid(f"not a readable ZIP archive: {exc}") from exc
    with archive:
        try:
            files = {name: archive.read(name) for name in archive.namelist()}
        except (zipfile.BadZipFile, OSError, ValueError) as exc:  # a CRC mismatch means a changed byte
            raise BundleInvalid(f"the archive is damaged: {exc}") from exc
    for name in (MANIFEST, SIGNATURE, *REQUIRED_FILES):
        if name not in files:
            raise BundleInvalid(f"{name} is missing")
    public_raw = _public_key_raw(files[PUBLIC_KEY])
    bundled_id = key_id(public_raw)
    if trusted_key_id is not None and bundled_id != trusted_key_id:
        raise BundleInvalid(f"signed with key {bundled_id}, not the trusted key {trusted_key_id}")
    if not verify_signature(public_raw, files[SIGNATURE], manifest_message(files[MANIFEST])):
        raise BundleInvalid("manifest.json does not match its signature (manifest.sig)")
    try:
        manifest = json.loads(files[MANIFEST])
    except json.JSONDecodeError as exc:
        raise BundleInvalid("manifest.json is not JSON") from exc
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleInvalid(f"unknown bundle format {manifest.get('format')!r}")
    if manifest.get("key_id") != bundled_id:
        raise BundleInvalid("the manifest names another key than the bundled one")
    listed: dict[str, str] = manifest.get("files", {})
    for name in REQUIRED_FILES:
        if name not in listed:
            raise BundleInvalid(f"the manifest does not list {name}")
    for name, digest in listed.items():
        if name not in files:
            raise BundleInvalid(f"{name} is listed in the manifest but missing")
        if hashlib.sha256(files[name]).hexdigest() != digest:
            raise BundleInvalid(f"{name} was altered (its SHA-256 differs from the manifest)")
    extra = set(files) - set(listed) - {MANIFEST, SIGNATURE}
    if extra:
        raise BundleInvalid(f"files not in the manifest: {', '.join(sorted(extra))}")

    links = _jsonl(files["chain.jsonl"], "chain.jsonl")
    checkpoints = _jsonl(files["checkpoints.jsonl"], "checkpoints.jsonl")
    events = _jsonl(files["events.jsonl"], "events.jsonl")
    segment = manifest.get("segment", {})
    literals = manifest.get("statement_literals", "revealed")  # bundles from before masking carried them
    report = verify_segment(
        links, checkpoints, events, public_raw, int(segment.get("start_anchor", 0)), masked_allowed=literals == "masked"
    )
    if report.problems:
        raise BundleInvalid(report.problems[0])
    filters = manifest.get("filters", {})
    for event in events:
        if not _matches_filters(event, filters):
            raise BundleInvalid(f"event {event['id']} does not match the export's filters")
    _check_csv(files["events.csv"], events)
    reviews = _jsonl(files[REVIEWS], REVIEWS) if REVIEWS in listed else []
    review_problems = check_reviews(events, reviews)
    if review_problems:
        raise BundleInvalid(review_problems[0])
    signed_reviews = sum(1 for event in events if event.get("kind") == REVIEW_SIGNED)
    return (
        f"bundle OK: {report.events} events, chain segment seq {report.first_seq}..{report.last_seq} "
        f"({report.links} links, {report.checkpoints} signed checkpoints), signed by key {bundled_id}"
        + ("" if trusted_key_id else " (compare this key id with the one your organisation publishes)")
        + (f"; {signed_reviews} signed activity reviews match their findings and notes" if signed_reviews else "")
        + (
            f"; statement literals masked: {report.masked} events not rehashed (the exporter checked them)"
            if report.masked
            else ""
        )
    )


def _check_csv(data: bytes, events: Sequence[Mapping[str, Any]]) -> None:
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    header = next(reader, None)
    if header is None or tuple(header) != CSV_FIELDS:
        raise BundleInvalid("events.csv has unexpected columns")
    rows = list(reader)
    if len(rows) != len(events):
        raise BundleInvalid("events.csv and events.jsonl hold different numbers of events")
    for row, event in zip(rows, events, strict=True):
        expected = [str(event["seq"]), *("" if event[name] is None else str(event[name]) for name in EVENT_FIELDS)]
        if row != expected:
            raise BundleInvalid(f"events.csv differs from events.jsonl for event {event['id']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audit.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="the evidence bundle (ZIP) to check")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--key-id", help="the id of the signing key you trust")
    trust.add_argument("--public-key", help="a PEM file with the public key you trust")
    args = parser.parse_args(argv)
    trusted = args.key_id
    if args.public_key:
        with open(args.public_key, "rb") as handle:
            trusted = key_id(_public_key_raw(handle.read()))
    try:
        print(verify_bundle(args.bundle, trusted))
    except BundleInvalid as exc:
        print(f"bundle INVALID: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
