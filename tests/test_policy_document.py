"""Policy as code: YAML round trip, strict validation, versioned and audited changes, and their effect."""

from __future__ import annotations

import psycopg
import pytest
import yaml
from django.core.management import CommandError, call_command

from audit.models import AuditEvent, EventKind
from identity.roles import Role
from policy.document import PolicyError, dump, export_document, import_document, load
from policy.models import DataSource, MaskRule, PolicyVersion
from tests.factories import agent_client, make_user, user_client


@pytest.fixture
def clinic(target) -> DataSource:  # type: ignore[no-untyped-def]
    return DataSource.objects.get(name="clinic")


@pytest.fixture
def restore_policy(clinic):  # type: ignore[no-untyped-def]
    original = dump(export_document(clinic))
    yield
    import_document("clinic", original, make_user(Role.ADMIN))


def test_round_trip_is_unchanged(clinic) -> None:  # type: ignore[no-untyped-def]
    text = dump(export_document(clinic))
    version = clinic.policy_version
    result = import_document("clinic", text, make_user(Role.ADMIN))
    assert not result.changed and result.version == version
    assert dump(export_document(DataSource.objects.get(pk=clinic.pk))) == text
    assert load(text)["columns"]  # the demo clinic's PHI catalog is in the document


def test_change_is_versioned_and_audited_with_before_and_after(clinic, restore_policy) -> None:  # type: ignore[no-untyped-def]
    document = yaml.safe_load(dump(export_document(clinic)))
    document["masks"]["ssn"]["agent"] = "redact"
    document["approvals"]["ddl"] = 3
    admin = make_user(Role.ADMIN)
    before_version = clinic.policy_version
    result = import_document("clinic", yaml.safe_dump(document), admin)
    assert result.changed and result.version == before_version + 1
    assert "-    agent: partial" in result.diff and "+    agent: redact" in result.diff
    version = PolicyVersion.objects.get(datasource=clinic, number=result.version)
    assert version.changed_by == admin and "agent: redact" in version.document
    event = AuditEvent.objects.filter(kind=EventKind.POLICY_CHANGED, actor=admin).get()
    assert event.details["before"]["masks"]["ssn"]["agent"] == "partial"
    assert event.details["after"]["masks"]["ssn"]["agent"] == "redact"
    assert event.details["after"]["approvals"]["ddl"] == 3
    assert MaskRule.objects.filter(datasource=clinic, phi_type="ssn", identity_kind="agent", mask="redact").exists()


def test_dry_run_changes_nothing(clinic) -> None:  # type: ignore[no-untyped-def]
    document = yaml.safe_load(dump(export_document(clinic)))
    document["masks"]["email"]["reviewer"] = "redact"
    version = clinic.policy_version
    result = import_document("clinic", yaml.safe_dump(document), make_user(Role.ADMIN), dry_run=True)
    assert result.changed and result.diff
    assert DataSource.objects.get(pk=clinic.pk).policy_version == version
    assert not MaskRule.objects.filter(datasource=clinic, phi_type="email", identity_kind="reviewer").exists()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(surprise=1), "unknown top-level keys"),
        (lambda d: d["masks"]["ssn"].update(agent="scramble"), "is not a mask"),
        (lambda d: d["masks"].update(dna={"agent": "redact"}), "not a PHI type"),
        (lambda d: d["masks"]["ssn"].update(robot="redact"), "keys must be among"),
        (lambda d: d["columns"].append({"table": "patients", "column": "x", "type": "ssn"}), "schema.table"),
        (lambda d: d["approvals"].update(default=0), "from 1 to 10"),
        (lambda d: d["inference"].update(ssn={"agent": "maybe"}), "is not an action"),
        (lambda d: d.update(format=99), "format must be"),
    ],
)
def test_invalid_documents_are_refused(clinic, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    document = yaml.safe_load(dump(export_document(clinic)))
    mutate(document)
    with pytest.raises(PolicyError, match=message):
        import_document("clinic", yaml.safe_dump(document), make_user(Role.ADMIN))


def test_command_export_and_import(clinic, tmp_path, restore_policy) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "policy.yaml"
    call_command("policy", "export", "--datasource", "clinic", "--out", str(path))
    text = path.read_text()
    path.write_text(text.replace("default: 1\n", "default: 2\n", 1))
    admin = make_user(Role.ADMIN)
    call_command("policy", "import", "--datasource", "clinic", "--file", str(path), "--actor", admin.username)
    assert DataSource.objects.get(pk=clinic.pk).approvals_default == 2
    with pytest.raises(CommandError, match="invalid policy"):
        path.write_text("format: 1\nmasks: [1, 2]\n")
        call_command("policy", "import", "--datasource", "clinic", "--file", str(path), "--actor", admin.username)


def test_masks_differ_by_kind_of_identity(services) -> None:  # type: ignore[no-untyped-def]
    sql = "SELECT full_name, ssn FROM patients WHERE id = 1"
    with psycopg.connect(services.target.owner_url) as conn:
        name, ssn = conn.execute("SELECT full_name, ssn FROM patients WHERE id = 1").fetchone()  # type: ignore[misc]
    owner = make_user(Role.ENGINEER)
    _, agent_api = agent_client(owner)
    body = {"datasource": "clinic", "sql": sql}
    as_agent = agent_api.post("/api/v1/queries", body, format="json").json()["rows"][0]
    as_engineer = user_client(owner).post("/api/v1/queries", body, format="json").json()["rows"][0]
    as_reviewer = user_client(make_user(Role.REVIEWER)).post("/api/v1/queries", body, format="json").json()["rows"][0]
    assert as_agent[0] != name and as_agent[1] == "***" + ssn[-4:]
    assert as_engineer[0] != name
    assert as_reviewer[0] == name  # reviewers may see names by default; SSNs stay partial for everyone
    assert as_reviewer[1] == "***" + ssn[-4:]


def test_approval_thresholds_come_from_the_policy(clinic, restore_policy) -> None:  # type: ignore[no-untyped-def]
    document = yaml.safe_load(dump(export_document(clinic)))
    document["approvals"] = {"default": 2, "ddl": 3, "bulk_write": 2}
    import_document("clinic", yaml.safe_dump(document), make_user(Role.ADMIN))
    _, agent_api = agent_client(make_user(Role.ENGINEER))

    def required(sql: str) -> int:
        from approvals.models import Ticket

        response = agent_api.post("/api/v1/queries", {"datasource": "clinic", "sql": sql}, format="json")
        return Ticket.objects.get(pk=response.json()["ticket"]["id"]).approvals_required

    assert required("DELETE FROM scratch WHERE id = 1") == 2
    assert required("DELETE FROM scratch") == 2
    assert required("DROP TABLE scratch") == 3


def test_admin_edits_are_versioned_and_audited(clinic, restore_policy) -> None:  # type: ignore[no-untyped-def]
    from django.test import Client

    staff = make_user(Role.ADMIN)
    staff.is_staff = staff.is_superuser = True
    staff.save()
    browser = Client()
    browser.force_login(staff)
    version = DataSource.objects.get(pk=clinic.pk).policy_version
    response = browser.post(
        "/admin/policy/maskrule/add/",
        {"datasource": clinic.pk, "phi_type": "email", "identity_kind": "reviewer", "mask": "redact"},
    )
    assert response.status_code == 302, response.content[:500]
    assert DataSource.objects.get(pk=clinic.pk).policy_version == version + 1
    event = AuditEvent.objects.filter(kind=EventKind.POLICY_CHANGED, actor=staff).get()
    assert event.front == "web"
    assert event.details["before"]["masks"]["email"]["reviewer"] == "pass"
    assert event.details["after"]["masks"]["email"]["reviewer"] == "redact"
    outsider = Client()
    outsider.force_login(make_user(Role.REVIEWER))
    assert outsider.get("/admin/policy/maskrule/").status_code == 302  # not staff: sent to the admin login


def test_approver_rules_are_part_of_the_document(clinic, restore_policy) -> None:  # type: ignore[no-untyped-def]
    from policy.models import ApproverRule

    document = yaml.safe_load(dump(export_document(clinic)))
    document["approvers"] = [
        {"risk": "any", "mode": "any_of", "count": 1, "groups": ["dba-doc", "security-doc"]},
        {"risk": "high", "mode": "all_of", "count": 1, "groups": ["dba-doc", "security-doc"]},
    ]
    result = import_document("clinic", yaml.safe_dump(document), make_user(Role.ADMIN))
    assert result.changed and "approvers" in result.diff
    rules = {rule.risk: rule for rule in ApproverRule.objects.filter(datasource=clinic)}
    assert set(rules) == {"any", "high"} and rules["high"].mode == "all_of"
    assert {group.name for group in rules["high"].groups.all()} == {"dba-doc", "security-doc"}
    exported = export_document(clinic)
    assert exported["approvers"] == document["approvers"]  # the round trip holds
    changed = AuditEvent.objects.filter(kind=EventKind.POLICY_CHANGED, datasource="clinic").order_by("-id").first()
    assert changed is not None and changed.details["after"]["approvers"] == document["approvers"]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"risk": "sometimes", "mode": "any_of", "count": 1, "groups": ["x"]}, "risk must be one of"),
        ({"risk": "any", "mode": "most_of", "count": 1, "groups": ["x"]}, "mode must be one of"),
        ({"risk": "any", "mode": "n_of", "count": 0, "groups": ["x"]}, "count must be 1 to 10"),
        ({"risk": "any", "mode": "n_of", "count": 1, "groups": []}, "non-empty list"),
        ({"risk": "any", "mode": "n_of", "groups": ["x"]}, "needs risk, mode, count, groups"),
    ],
)
def test_invalid_approver_rules_are_refused(clinic, rule, message: str) -> None:  # type: ignore[no-untyped-def]
    document = yaml.safe_load(dump(export_document(clinic)))
    document["approvers"] = [rule]
    with pytest.raises(PolicyError, match=message):
        import_document("clinic", yaml.safe_dump(document), make_user(Role.ADMIN))
