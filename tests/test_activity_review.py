"""The activity review (issue 16): findings computed from audit events, notes, the chained sign-off, the pages,
and the sign-off in evidence bundles, where the offline verifier catches a review changed after it was signed."""

from __future__ import annotations

import itertools
import json
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.utils import timezone

from audit.activity_review import (
    ReviewRefused,
    ensure_periods,
    note_finding,
    period_containing,
    refresh_findings,
    review_document,
    sign_off,
    verify_signed_reviews,
)
from audit.canonical import review_digest
from audit.evidence import ExportFilters, export_evidence
from audit.evidence_report import SECTION_TITLES
from audit.models import (
    AuditEvent,
    Disposition,
    EventKind,
    FindingKind,
    ReviewFinding,
    ReviewPeriod,
    ReviewStatus,
)
from audit.review_findings import findings_for
from identity.principal import Principal
from identity.roles import Role, RoleRequired
from policy.models import DataSource
from tests.factories import make_user
from tests.pdf_text import body_lines, pdf_pages
from tests.review_activity import Activity, activity_period
from tests.tampering import chain_until_linked, superuser
from tests.test_audit_evidence import offline_verify

pytestmark = pytest.mark.usefixtures("services")


def by_kind(period: ReviewPeriod) -> dict[str, list[ReviewFinding]]:
    found: dict[str, list[ReviewFinding]] = {}
    for finding in period.findings.order_by("key"):
        found.setdefault(finding.kind, []).append(finding)
    return found


def note_all(officer: Any, period: ReviewPeriod) -> None:
    for number, finding in enumerate(period.findings.order_by("key")):
        disposition = Disposition.FOLLOW_UP if finding.kind == FindingKind.PHI_VOLUME else Disposition.EXPLAINED
        note_finding(Principal(human=officer), period.pk, finding.pk, disposition, f"checked with the owner ({number})")


def test_the_queue_holds_what_needs_a_human_look() -> None:
    activity = activity_period()
    period = activity.period
    assert refresh_findings(period) > 0
    found = by_kind(period)
    owner, agent = activity.owner, activity.agent.name

    (denied,) = found[FindingKind.DENIED]
    assert denied.event_count == 2 and denied.people == [owner.pk]
    assert "2 statements by" in denied.summary and "denied: denied by policy: COPY PROGRAM (2x)" in denied.summary
    (held,) = found[FindingKind.HELD]
    assert "approved" in held.summary and activity.reviewer.get_username() in held.summary
    assert set(held.people) == {owner.pk, activity.reviewer.pk}  # the approver is involved too
    (phi,) = found[FindingKind.PHI_VOLUME]
    assert phi.agent_name == agent and "500 rows" in phi.summary  # a new agent: its baseline is zero
    (night,) = found[FindingKind.OFF_HOURS]
    assert night.agent_name == agent and night.event_count == 1
    (failed,) = found[FindingKind.FAILED_SIGN_IN]
    assert failed.subject_name == agent and failed.people == [owner.pk] and "192.0.2.7" in failed.summary
    (first_use,) = found[FindingKind.NEW_DATASOURCE]
    assert first_use.agent_name == agent and "patients" in first_use.summary
    (new_tables,) = found[FindingKind.NEW_TABLES]
    assert new_tables.agent_name == activity.veteran.name
    assert "billing" in new_tables.summary and "appointments" not in new_tables.summary
    assert all(finding.disposition == Disposition.PENDING for finding in period.findings.all())
    assert "ssn" not in " ".join(finding.summary for finding in period.findings.all())  # no statement text
    assert refresh_findings(period) == 0  # refreshing again changes nothing


def test_a_usual_volume_is_not_an_outlier() -> None:
    activity = activity_period()
    before_start = activity.period.starts_at - timedelta(weeks=1)
    from tests.review_activity import event_at

    for week in range(4):  # the same 500 rows every week before: the agent's own normal
        event_at(
            before_start - timedelta(weeks=week) + timedelta(days=1, hours=9),
            EventKind.QUERY_EXECUTED,
            principal=Principal.for_agent(activity.agent),
            datasource=activity.datasource,
            details={"rowcount": 500, "phi_types": ["ssn"], "masking": {"ssn": {"phi_type": "ssn"}}},
        )
    kinds = {
        found.kind for found in findings_for(activity.datasource, activity.period.starts_at, activity.period.ends_at)
    }
    assert FindingKind.PHI_VOLUME not in kinds
    assert FindingKind.NEW_DATASOURCE in kinds  # statements, not reads, make first use


def test_notes_then_a_sign_off_that_is_a_chained_event_and_freezes_the_review() -> None:
    activity = activity_period()
    period, officer = activity.period, make_user(Role.COMPLIANCE, name="officer")
    refresh_findings(period)
    with pytest.raises(ReviewRefused, match="not yet marked"):
        sign_off(Principal(human=officer), period.pk)
    with pytest.raises(ReviewRefused, match="write a note"):
        finding = period.findings.first()
        assert finding is not None
        note_finding(Principal(human=officer), period.pk, finding.pk, Disposition.EXPLAINED, "  ")
    with pytest.raises(RoleRequired):
        note_finding(Principal(human=activity.reviewer), period.pk, finding.pk, Disposition.EXPLAINED, "fine")
    note_all(officer, period)
    with pytest.raises(RoleRequired):
        sign_off(Principal(human=activity.reviewer), period.pk)

    signed = sign_off(Principal(human=officer), period.pk)
    total = period.findings.count()
    event = AuditEvent.objects.get(pk=signed.sign_off_event_id)
    assert event.kind == EventKind.AUDIT_REVIEW_SIGNED and event.actor == officer
    assert event.datasource == activity.datasource
    assert event.details["review"] == period.pk and event.details["signed_by"] == officer.get_username()
    assert event.details["findings"] == {"total": total, "explained": total - 1, "follow_up": 1}
    assert event.details["period"]["start"].startswith(period.starts_at.strftime("%Y-%m-%dT%H:%M"))
    assert event.details["digest"] == signed.digest and len(signed.digest) == 64
    assert ReviewPeriod.objects.get(pk=period.pk).status() == ReviewStatus.SIGNED_OFF
    chain_until_linked([event])  # hash-chained and under a signed checkpoint like every other event

    with pytest.raises(ReviewRefused, match="signed off"):
        note_finding(Principal(human=officer), period.pk, finding.pk, Disposition.FOLLOW_UP, "changed my mind")
    with pytest.raises(ReviewRefused, match="already signed off"):
        sign_off(Principal(human=make_user(Role.COMPLIANCE)), period.pk)
    # The database holds the line whatever the code does.
    for change in (
        lambda: ReviewFinding.objects.filter(period=period).update(note="rewritten"),
        lambda: ReviewFinding.objects.filter(period=period).delete(),
        lambda: ReviewPeriod.objects.filter(pk=period.pk).update(digest="0" * 64),
        lambda: _sql("DELETE FROM audit_reviewperiod WHERE id = %s", period.pk),
        lambda: _sql(
            "INSERT INTO audit_reviewfinding (period_id, key, kind, subject_name, agent_name, people, "
            "summary, event_count, first_at, last_at, event_ids, disposition, note, noted_by_name) "
            "VALUES (%s, 'late', 'denied', '', '', '{}', 'late', 1, now(), now(), '{}', 'pending', '', '')",
            period.pk,
        ),
    ):
        with pytest.raises(DatabaseError, match="signed off"), transaction.atomic():
            change()
    assert verify_signed_reviews() == []


def _sql(statement: str, *params: object) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def test_nobody_reviews_their_own_activity() -> None:
    subject = make_user(Role.COMPLIANCE, name="subject")
    activity = activity_period(denied_by=subject)
    period = activity.period
    refresh_findings(period)
    own = period.findings.involving(subject).filter(kind=FindingKind.DENIED).get()
    with pytest.raises(ReviewRefused, match="your own activity"):
        note_finding(Principal(human=subject), period.pk, own.pk, Disposition.EXPLAINED, "it was me, all fine")
    colleague = make_user(Role.COMPLIANCE, name="colleague")
    note_all(colleague, period)
    with pytest.raises(ReviewRefused, match="concern your own activity"):
        sign_off(Principal(human=subject), period.pk)
    assert sign_off(Principal(human=colleague), period.pk).signed_off_by == colleague


def test_a_period_is_signed_off_only_once_it_has_ended() -> None:
    name = f"running{ReviewPeriod.objects.count()}"
    DataSource.objects.create(name=name)
    start, end = period_containing(timezone.now())
    period = ReviewPeriod.objects.create(datasource=name, starts_at=start, ends_at=end)
    assert period.status() == ReviewStatus.OPEN
    with pytest.raises(ReviewRefused, match="not ended"):
        sign_off(Principal(human=make_user(Role.COMPLIANCE)), period.pk)


def test_periods_are_created_per_data_source_without_gaps() -> None:
    name = f"fresh{ReviewPeriod.objects.count()}"
    DataSource.objects.create(name=name)
    now = timezone.now()
    ensure_periods(now)
    ensure_periods(now)  # idempotent
    periods = ReviewPeriod.objects.filter(datasource=name)
    assert list(periods.values_list("starts_at", flat=True)) == [period_containing(now)[0]]  # none before it existed
    ensure_periods(now + timedelta(weeks=3))
    starts = sorted(periods.values_list("starts_at", flat=True))
    assert [later - earlier for earlier, later in itertools.pairwise(starts)] == [timedelta(weeks=1)] * 3
    assert starts[0].weekday() == 0 and starts[0].hour == 0  # weekly periods start on Monday at midnight UTC


def client_for(user: Any | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def test_the_pages_are_for_compliance_officers_and_show_overdue_reviews() -> None:
    activity = activity_period(weeks_ago=3)  # ended more than 7 days ago: overdue
    period = activity.period
    refresh_findings(period)
    finding = period.findings.order_by("key").first()
    assert finding is not None
    pages = ["/audit/reviews/", f"/audit/reviews/{period.pk}/"]
    posts = [f"/audit/reviews/{period.pk}/findings/{finding.pk}/note", f"/audit/reviews/{period.pk}/sign-off"]
    for outsider in (activity.reviewer, activity.owner, make_user()):
        for url in pages + posts:
            response = client_for(outsider).post(url) if url in posts else client_for(outsider).get(url)
            assert response.status_code == 403, (outsider, url)
    for url in pages:
        assert "/accounts/login/" in client_for(None).get(url)["Location"]

    officer = make_user(Role.COMPLIANCE, name="officer")
    client = client_for(officer)
    listing = client.get("/audit/reviews/").content.decode()
    assert f'data-period="{period.pk}" data-status="overdue"' in listing and 'id="overdue"' in listing
    assert 'class="nav-alert"' in listing and "overdue</span>" in listing  # in the navigation bar, on every page
    assert 'class="nav-alert"' in client.get("/audit/").content.decode()
    assert 'class="nav-alert"' not in client_for(activity.reviewer).get("/queue/").content.decode()
    page = client.get(f"/audit/reviews/{period.pk}/").content.decode()
    assert f'id="finding-{finding.pk}"' in page and "sign-off-blockers" in page
    assert client.get("/audit/reviews/999999999/").status_code == 404
    assert client.get(posts[0]).status_code == 405

    bad = client.post(posts[0], {"disposition": "maybe", "note": "x"}, follow=True)
    assert "Not saved" in bad.content.decode()
    for each in period.findings.all():
        response = client.post(
            f"/audit/reviews/{period.pk}/findings/{each.pk}/note", {"disposition": "explained", "note": "routine"}
        )
        assert response.status_code == 302 and response["Location"].endswith(f"#finding-{each.pk}")
    assert not period.findings.pending().exists()
    assert client.post(posts[1]).status_code == 302
    period.refresh_from_db()
    assert period.signed_off_by == officer
    event = AuditEvent.objects.get(pk=period.sign_off_event_id)
    assert event.front == "web" and event.session_id.startswith("web:")
    listing = client.get("/audit/reviews/").content.decode()
    assert f'data-period="{period.pk}" data-status="signed_off"' in listing


# --- Evidence bundles ----------------------------------------------------------------------------------------


def signed_period(officer: Any) -> Activity:
    activity = activity_period()
    refresh_findings(activity.period)
    note_all(officer, activity.period)
    activity.period = sign_off(Principal(human=officer), activity.period.pk)
    event = AuditEvent.objects.get(pk=activity.period.sign_off_event_id)
    chain_until_linked([*activity.events, event])
    return activity


def export_period(tmp_path: Path, activity: Activity, officer: Any, name: str = "bundle.zip") -> Any:
    period = activity.period
    filters = ExportFilters(since=period.starts_at, until=period.ends_at, datasource=activity.datasource)
    return export_evidence(filters, tmp_path / name, requested_by=Principal(human=officer))


def test_a_bundle_of_one_person_carries_the_periods_review_and_verifies_offline(tmp_path: Path) -> None:
    """Filtered to one person, a bundle still holds the sign-off of the period's review (someone else's event):
    the review is the period's evidence, and the offline verifier's filter check accepts it."""
    officer = make_user(Role.COMPLIANCE, name="officer")
    activity = signed_period(officer)
    period = activity.period
    person = next(event.actor_name for event in activity.events if event.actor_name)
    filters = ExportFilters(since=period.starts_at, until=period.ends_at, user=person)
    result = export_evidence(filters, tmp_path / "person.zip", requested_by=Principal(human=officer))
    assert result.chain_ok, result.chain_status
    with zipfile.ZipFile(result.path) as archive:
        events = [json.loads(line) for line in archive.read("events.jsonl").splitlines()]
    signed = [event for event in events if event["kind"] == EventKind.AUDIT_REVIEW_SIGNED]
    assert period.pk in [event["details"]["review"] for event in signed]  # with other data sources' of the week
    assert {event["actor_name"] for event in events if event not in signed} == {person}
    verified = offline_verify(result.path)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_signed_review_is_in_the_bundle_of_its_period_and_verifies_offline(tmp_path: Path) -> None:
    officer = make_user(Role.COMPLIANCE, name="officer")
    activity = signed_period(officer)
    result = export_period(tmp_path, activity, officer)
    assert result.chain_ok, result.chain_status
    with zipfile.ZipFile(result.path) as archive:
        events = [json.loads(line) for line in archive.read("events.jsonl").splitlines()]
        (review,) = [json.loads(line) for line in archive.read("reviews.jsonl").splitlines()]
        manifest = json.loads(archive.read("manifest.json"))
        pdf = archive.read("report.pdf")
    # The sign-off happened after the period, yet it is this period's evidence.
    (signed,) = [event for event in events if event["kind"] == EventKind.AUDIT_REVIEW_SIGNED]
    assert signed["occurred_at"] > manifest["filters"]["until"]
    assert review["review"] == activity.period.pk and review_digest(review) == signed["details"]["digest"]
    assert "reviews.jsonl" in manifest["files"]
    verified = offline_verify(result.path)
    assert verified.returncode == 0, verified.stderr
    assert "1 signed activity reviews match" in verified.stdout

    lines = body_lines(pdf_pages(pdf, tmp_path))
    start = lines.index(SECTION_TITLES[12])
    section = " ".join(lines[start : lines.index(SECTION_TITLES[13])])
    assert officer.get_username() in section and activity.datasource in section
    assert signed["details"]["digest"][:20] in section.replace(" ", "")
    assert "checked with the owner" in section and "follow-up" in section


def test_the_verifier_detects_a_note_changed_after_the_sign_off(tmp_path: Path) -> None:
    officer = make_user(Role.COMPLIANCE, name="officer")
    activity = signed_period(officer)
    finding = activity.period.findings.order_by("key").first()
    assert finding is not None
    with superuser() as admin:  # triggers off: only a superuser can
        admin.execute("UPDATE audit_reviewfinding SET note = 'nothing to see' WHERE id = %s", [finding.pk])
        try:
            assert any(str(activity.period.pk) in problem for problem in verify_signed_reviews())
            result = export_period(tmp_path, activity, officer)
            assert not result.chain_ok and "changed after the sign-off" in result.chain_status
            verified = offline_verify(result.path)
            assert verified.returncode == 1
            assert f"activity review {activity.period.pk}" in verified.stderr
            assert "changed after the sign-off" in verified.stderr
        finally:
            admin.execute("UPDATE audit_reviewfinding SET note = %s WHERE id = %s", [finding.note, finding.pk])
    assert verify_signed_reviews() == []


def test_the_verifier_detects_an_edited_sign_off_event(tmp_path: Path) -> None:
    officer = make_user(Role.COMPLIANCE, name="officer")
    activity = signed_period(officer)
    event = AuditEvent.objects.get(pk=activity.period.sign_off_event_id)
    finding = activity.period.findings.order_by("key").first()
    assert finding is not None
    with superuser() as admin:
        # Change a note and make the sign-off event's digest match it: the event no longer hashes to its link.
        admin.execute("UPDATE audit_reviewfinding SET note = 'nothing to see' WHERE id = %s", [finding.pk])
        forged = review_digest(review_document(activity.period, activity.period.findings.all()))
        admin.execute(
            "UPDATE audit_auditevent SET details = jsonb_set(details, '{digest}', to_jsonb(%s::text)) WHERE id = %s",
            [forged, event.pk],
        )
        admin.execute("UPDATE audit_reviewperiod SET digest = %s WHERE id = %s", [forged, activity.period.pk])
        try:
            assert verify_signed_reviews() == []  # the database copy agrees with itself now...
            result = export_period(tmp_path, activity, officer)
            assert not result.chain_ok
            verified = offline_verify(result.path)
            assert verified.returncode == 1
            assert f"event {event.pk}" in verified.stderr and "does not match its hash" in verified.stderr
        finally:
            admin.execute(
                "UPDATE audit_auditevent SET details = %s::jsonb WHERE id = %s", [json.dumps(event.details), event.pk]
            )
            admin.execute(
                "UPDATE audit_reviewperiod SET digest = %s WHERE id = %s", [event.details["digest"], activity.period.pk]
            )
            admin.execute("UPDATE audit_reviewfinding SET note = %s WHERE id = %s", [finding.note, finding.pk])


def test_a_bundle_missing_a_review_does_not_verify(tmp_path: Path) -> None:
    """A bundle whose reviews.jsonl lost a review (the manifest re-signed with the key, as a rogue exporter
    could) still fails: the chained sign-off names a review the bundle does not hold."""
    from audit.canonical import manifest_message
    from audit.signing import signing_key

    officer = make_user(Role.COMPLIANCE, name="officer")
    result = export_period(tmp_path, signed_period(officer), officer)
    import hashlib

    with zipfile.ZipFile(result.path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["reviews.jsonl"] = b""
    manifest = json.loads(files["manifest.json"])
    manifest["files"]["reviews.jsonl"] = hashlib.sha256(b"").hexdigest()
    files["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    files["manifest.sig"] = signing_key().sign(manifest_message(files["manifest.json"]))
    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(forged, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    verified = offline_verify(forged)
    assert verified.returncode == 1 and "is not in reviews.jsonl" in verified.stderr
