"""Evidence bundles: export_evidence writes them, ``python -m audit.verify`` checks them with no database.

The offline verifier runs in a subprocess whose environment has no Django settings and no database URL, as on
an auditor's laptop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from audit.chain import ChainBroken, extend_chain
from audit.models import AuditEvent, ChainLink, EventKind
from audit.recorder import record
from audit.signing import public_pem, signing_key, signing_key_id
from identity.principal import Principal
from identity.roles import Role
from tests.factories import make_agent, make_user
from tests.pdf_text import body_lines, pdf_pages
from tests.tampering import chain_until_linked, put_back, saved, superuser, swap_links

PROJECT = Path(__file__).resolve().parent.parent
BUNDLE_FILES = {
    "manifest.json",
    "manifest.sig",
    "events.jsonl",
    "events.csv",
    "chain.jsonl",
    "checkpoints.jsonl",
    "reviews.jsonl",
    "report.pdf",
    "public_key.pem",
}


def offline_verify(bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m audit.verify`` with nothing but the package on the path: no settings, no database."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(PROJECT)}
    return subprocess.run(
        [sys.executable, "-m", "audit.verify", str(bundle), *extra],
        cwd=bundle.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def export(tmp_path: Path, *args: str, name: str = "bundle.zip") -> Path:
    out = tmp_path / name
    today = timezone.now().date()
    call_command(
        "export_evidence",
        "--since",
        str(today - timedelta(days=1)),
        "--until",
        str(today + timedelta(days=1)),
        "--out",
        str(out),
        *args,
    )
    return out


@pytest.fixture
def activity() -> dict[str, object]:
    """A little history: an agent's read, a denial and a ticket with a review, by two different people."""
    owner, reviewer = make_user(Role.ENGINEER, name="owner"), make_user(Role.REVIEWER, name="reviewer")
    agent, _ = make_agent(owner)
    as_agent, as_reviewer = Principal(human=owner, agent=agent), Principal(human=reviewer)
    submitted = record(
        EventKind.QUERY_SUBMITTED,
        principal=as_agent,
        datasource="clinic",
        statement="SELECT ssn FROM patients WHERE id = 1",
        details={"verdict": "allowed", "relations": ["patients"]},
    )
    record(
        EventKind.QUERY_EXECUTED,
        principal=as_agent,
        datasource="clinic",
        details={
            "submitted_event": submitted.pk,
            "rowcount": 1,
            "masking": {"ssn": {"mask": "partial", "phi_type": "ssn"}},
        },
    )
    record(EventKind.QUERY_DENIED, principal=as_agent, datasource="clinic", summary="denied by policy: COPY PROGRAM")
    record(
        EventKind.TICKET_CREATED,
        principal=as_agent,
        datasource="clinic",
        ticket_id=987654,
        statement="DELETE FROM scratch",
    )
    reviewed = record(
        EventKind.TICKET_REVIEWED, principal=as_reviewer, ticket_id=987654, details={"decision": "approve"}
    )
    # The export selects chained events only; on a busy cluster another session's open transaction can hold
    # the chain's horizon back past the export's own extend_chain.
    chain_until_linked([submitted, reviewed])
    return {"owner": owner, "reviewer": reviewer, "submitted": submitted}


def test_a_bundle_verifies_offline(tmp_path: Path, activity: dict[str, object]) -> None:
    bundle = export(tmp_path)
    with zipfile.ZipFile(bundle) as archive:
        assert set(archive.namelist()) == BUNDLE_FILES
        manifest = json.loads(archive.read("manifest.json"))
        events = [json.loads(line) for line in archive.read("events.jsonl").splitlines()]
        report = archive.read("report.pdf")
    assert manifest["key_id"] == signing_key_id()
    assert manifest["chain_status"].startswith("verified")
    assert any(event["id"] == activity["submitted"].pk for event in events)  # type: ignore[attr-defined]
    assert report.startswith(b"%PDF")
    # The report's text as laid out on its pages (tests/test_evidence_report.py checks the layout itself).
    text = " ".join(body_lines(pdf_pages(report, tmp_path)))
    reviewer = activity["reviewer"].get_username()  # type: ignore[attr-defined]
    for expected in ("Chain status verified", "7. Denials", "COPY PROGRAM", "Ticket 987654", f"{reviewer} approve"):
        assert expected in text, expected
    result = offline_verify(bundle)
    assert result.returncode == 0, result.stderr
    assert "bundle OK" in result.stdout and signing_key_id() in result.stdout


def test_the_trusted_key_can_be_pinned(tmp_path: Path, activity: dict[str, object]) -> None:
    bundle = export(tmp_path)
    assert offline_verify(bundle, "--key-id", signing_key_id()).returncode == 0
    assert offline_verify(bundle, "--key-id", "0" * 16).returncode == 1
    pem = tmp_path / "trusted.pem"
    pem.write_bytes(public_pem(signing_key().public_key()))
    assert offline_verify(bundle, "--public-key", str(pem)).returncode == 0


def test_the_export_itself_is_audited(tmp_path: Path) -> None:
    before = AuditEvent.objects.filter(kind=EventKind.AUDIT_EXPORTED).count()
    export(tmp_path)
    exported = AuditEvent.objects.filter(kind=EventKind.AUDIT_EXPORTED).order_by("-id").first()
    assert AuditEvent.objects.filter(kind=EventKind.AUDIT_EXPORTED).count() == before + 1
    assert exported is not None and exported.front == "cli" and exported.actor_name.startswith("os:")
    assert exported.details["file"] == "bundle.zip"


def test_a_filtered_bundle_holds_only_that_person_and_still_verifies(
    tmp_path: Path, activity: dict[str, object]
) -> None:
    owner = activity["owner"]
    bundle = export(tmp_path, "--user", owner.get_username())  # type: ignore[attr-defined]
    with zipfile.ZipFile(bundle) as archive:
        events = [json.loads(line) for line in archive.read("events.jsonl").splitlines()]
        links = [json.loads(line) for line in archive.read("chain.jsonl").splitlines()]
    # Besides the person's own events, a bundle carries the sign-offs of the activity reviews of the periods it
    # overlaps, whoever signed them (audit.evidence.ExportFilters.where): the review belongs with its evidence.
    own = [event for event in events if event["kind"] != "audit.review_signed"]
    assert own and {event["actor_name"] for event in own} == {owner.get_username()}  # type: ignore[attr-defined]
    assert {link["state"] for link in links} == {"included", "excluded"}  # the reviewer's event: hash only
    assert offline_verify(bundle).returncode == 0


def rewrite_member(bundle: Path, name: str, change: Callable[[bytes], bytes]) -> Path:
    """A consistent ZIP (fresh CRCs) whose one member was changed: only our own hashes can catch it."""
    altered = bundle.with_name(f"altered-{name}.zip")
    with zipfile.ZipFile(bundle) as source, zipfile.ZipFile(altered, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            target.writestr(item, change(data) if item == name else data)
    return altered


def flip_one_byte(data: bytes) -> bytes:
    if not data:  # reviews.jsonl of a period nobody signed off: an empty file gains a byte
        return b"\n"
    position = len(data) // 2
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


@pytest.mark.parametrize("member", sorted(BUNDLE_FILES))
def test_an_altered_byte_in_any_file_is_detected(tmp_path: Path, activity: dict[str, object], member: str) -> None:
    bundle = export(tmp_path)
    result = offline_verify(rewrite_member(bundle, member, flip_one_byte))
    assert result.returncode == 1, result.stdout
    assert "bundle INVALID" in result.stderr


def test_an_altered_byte_in_the_archive_itself_is_detected(tmp_path: Path, activity: dict[str, object]) -> None:
    bundle = export(tmp_path)
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(flip_one_byte(bundle.read_bytes()))
    assert offline_verify(damaged).returncode == 1


def test_an_added_file_is_detected(tmp_path: Path) -> None:
    bundle = export(tmp_path)
    with zipfile.ZipFile(bundle, "a") as archive:
        archive.writestr("extra.txt", b"not part of the evidence")
    assert "extra.txt" in offline_verify(bundle).stderr


def export_after(tmp_path: Path, tamper: Callable[[object], None], expected: str) -> None:
    """Tamper with the database, export, and check the offline verifier names the problem."""
    made = [
        record(EventKind.TOKEN_ISSUED, principal=Principal(human=make_user(Role.ENGINEER)), summary=f"evidence {n}")
        for n in range(3)
    ]
    chain_until_linked(made)
    with superuser() as admin:
        restore = tamper((admin, made))
        try:
            out = tmp_path / "tampered.zip"
            with pytest.raises(CommandError, match="did not verify"):
                export(tmp_path, name=out.name)
            result = offline_verify(out)
            assert result.returncode == 1
            assert expected in result.stderr, result.stderr
        finally:
            restore()  # type: ignore[misc]


def test_a_row_changed_in_the_database_is_detected_in_the_bundle(tmp_path: Path) -> None:
    def tamper(arg):  # type: ignore[no-untyped-def]
        admin, made = arg
        admin.execute("UPDATE audit_auditevent SET summary = 'changed' WHERE id = %s", [made[1].pk])
        return lambda: admin.execute(
            "UPDATE audit_auditevent SET summary = %s WHERE id = %s", [made[1].summary, made[1].pk]
        )

    export_after(tmp_path, tamper, "does not match its hash")


def test_a_deleted_row_is_detected_in_the_bundle(tmp_path: Path) -> None:
    def tamper(arg):  # type: ignore[no-untyped-def]
        admin, made = arg
        copy = saved(admin, "audit_auditevent", "id = %s", [made[1].pk])
        admin.execute("DELETE FROM audit_auditevent WHERE id = %s", [made[1].pk])
        return lambda: put_back(admin, "audit_auditevent", copy)

    export_after(tmp_path, tamper, "was deleted")


def test_a_reordered_pair_is_detected_in_the_bundle(tmp_path: Path) -> None:
    def tamper(arg):  # type: ignore[no-untyped-def]
        admin, made = arg
        first, second = (ChainLink.objects.get(event_id=event.pk).seq for event in made[:2])
        swap_links(admin, first, second)
        return lambda: swap_links(admin, first, second)

    export_after(tmp_path, tamper, "the chain breaks")


def test_a_truncated_tail_is_detected_in_the_bundle(tmp_path: Path) -> None:
    def tamper(arg):  # type: ignore[no-untyped-def]
        admin, made = arg
        ids = [event.pk for event in made]
        events = saved(admin, "audit_auditevent", "id = ANY(%s)", [ids])
        links = saved(admin, "audit_chainlink", "event_id = ANY(%s)", [ids])
        admin.execute("DELETE FROM audit_chainlink WHERE event_id = ANY(%s)", [ids])
        admin.execute("DELETE FROM audit_auditevent WHERE id = ANY(%s)", [ids])
        with pytest.raises(ChainBroken):
            extend_chain()  # nothing is appended or signed on top of a cut

        def restore() -> None:
            put_back(admin, "audit_auditevent", events)
            put_back(admin, "audit_chainlink", links)

        return restore

    export_after(tmp_path, tamper, "removed from the tail")
