"""The whole policy of a data source as one YAML document: export, validate, import, version, audit.

Policy as code: the document is what reviewers read in a pull request and what ``manage.py policy import``
applies. It is complete on export (every mask cell, defaults included) so a diff shows exactly what changes.
Import is strict: unknown keys, types, kinds, masks or actions are errors, never ignored. A change bumps the
data source's version, stores the document verbatim (PolicyVersion), and is one audit event with before and
after, in the same transaction.

``classified`` lists the relations the policy has looked at (policy.classification): agents may read only those.
A relation's tags do not classify it; list it here once its columns have been reviewed (those without tags then
hold no PHI).

``patient_keys`` lists the columns that identify a patient (``{table, column, key}``, the key being its kind, such
as ``patient_id`` or ``mrn``): the accounting of disclosures records their values, pseudonymised (policy.patient_keys).
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import yaml
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.db.models import F

from audit.models import EventKind
from audit.recorder import Context, record
from identity.principal import Principal
from policy.defaults import DEFAULT_INFERENCE, DEFAULT_MASKS
from policy.models import (
    ApproverMode,
    ApproverRule,
    ClassificationSource,
    ClassifiedRelation,
    DataSource,
    IdentityKind,
    InferenceAction,
    InferenceRule,
    Mask,
    MaskRule,
    PatientKeyColumn,
    PhiColumn,
    PhiType,
    PolicyVersion,
    RiskScope,
)

FORMAT = 1
_KINDS = [kind.value for kind in IdentityKind]
_TABLE = re.compile(r"^[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*$")
_TOP_KEYS = {
    "format",
    "datasource",
    "version",
    "approvals",
    "approvers",
    "columns",
    "classified",
    "patient_keys",
    "masks",
    "inference",
}
_APPROVER_KEYS = {"risk", "mode", "count", "groups"}
_KEY_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class PolicyError(ValueError):
    """The document is not a valid policy; the message says where."""


@dataclass(frozen=True)
class ImportResult:
    changed: bool
    version: int
    diff: str


def export_document(datasource: DataSource) -> dict[str, Any]:
    masks = {(str(t), str(k)): str(m) for t, row in DEFAULT_MASKS.items() for k, m in row.items()}
    for rule in MaskRule.objects.filter(datasource=datasource):
        masks[(rule.phi_type, rule.identity_kind)] = rule.mask
    inference_rules = {
        (r.phi_type, r.identity_kind): r.action for r in InferenceRule.objects.filter(datasource=datasource)
    }
    return {
        "format": FORMAT,
        "datasource": datasource.name,
        "version": datasource.policy_version,
        "approvals": {
            "default": datasource.approvals_default,
            "ddl": datasource.approvals_ddl,
            "bulk_write": datasource.approvals_bulk_write,
        },
        "approvers": [
            {
                "risk": rule.risk,
                "mode": rule.mode,
                "count": rule.count,
                "groups": sorted(group.name for group in rule.groups.all()),
            }
            for rule in sorted(datasource.approver_rules.prefetch_related("groups"), key=lambda r: r.risk)
        ],
        "columns": [
            {"table": f"{c.schema_name}.{c.table_name}", "column": c.column_name, "type": c.phi_type}
            for c in PhiColumn.objects.filter(datasource=datasource).order_by(
                "schema_name", "table_name", "column_name"
            )
        ],
        "classified": [
            f"{r.schema_name}.{r.table_name}"
            for r in ClassifiedRelation.objects.filter(datasource=datasource).order_by("schema_name", "table_name")
        ],
        # Columns that identify a patient, for the accounting of disclosures (policy.patient_keys).
        "patient_keys": [
            {"table": f"{k.schema_name}.{k.table_name}", "column": k.column_name, "key": k.key_name}
            for k in PatientKeyColumn.objects.filter(datasource=datasource).order_by(
                "schema_name", "table_name", "column_name"
            )
        ],
        "masks": {str(t): {kind: masks[(str(t), kind)] for kind in _KINDS} for t in PhiType},
        "inference": {
            "default": {str(k): str(a) for k, a in DEFAULT_INFERENCE.items()},
            **{
                t: {kind: inference_rules[(t, kind)] for kind in _KINDS if (t, kind) in inference_rules}
                for t in sorted({t for t, _ in inference_rules})
            },
        },
    }


def dump(document: dict[str, Any]) -> str:
    return (
        "# phigate policy (see docs/architecture.md); edit and apply with manage.py policy import\n"
        + yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True)
    )


def load(text: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise PolicyError("the document must be a mapping")
    validate(document)
    return document


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise PolicyError(message)


def validate(document: dict[str, Any]) -> None:
    unknown = set(document) - _TOP_KEYS
    _require(not unknown, f"unknown top-level keys: {sorted(unknown)}")
    _require(document.get("format") == FORMAT, f"format must be {FORMAT}")
    approvals = document.get("approvals", {})
    _require(isinstance(approvals, dict), "approvals must be a mapping")
    _require(set(approvals) <= {"default", "ddl", "bulk_write"}, f"unknown approvals keys: {sorted(approvals)}")
    for key, value in approvals.items():
        _require(isinstance(value, int) and 1 <= value <= 10, f"approvals.{key} must be an integer from 1 to 10")
    approvers = document.get("approvers", [])
    _require(isinstance(approvers, list), "approvers must be a list")
    risks: set[str] = set()
    for index, rule in enumerate(approvers):
        where = f"approvers[{index}]"
        _require(isinstance(rule, dict) and set(rule) == _APPROVER_KEYS, f"{where} needs risk, mode, count, groups")
        _require(rule["risk"] in RiskScope.values, f"{where}.risk must be one of {RiskScope.values}")
        _require(rule["risk"] not in risks, f"{where} repeats risk {rule['risk']}")
        risks.add(rule["risk"])
        _require(rule["mode"] in ApproverMode.values, f"{where}.mode must be one of {ApproverMode.values}")
        _require(isinstance(rule["count"], int) and 1 <= rule["count"] <= 10, f"{where}.count must be 1 to 10")
        groups = rule["groups"]
        _require(
            isinstance(groups, list) and bool(groups) and all(isinstance(name, str) and name for name in groups),
            f"{where}.groups must be a non-empty list of group names",
        )
    columns = document.get("columns", [])
    _require(isinstance(columns, list), "columns must be a list")
    seen = set()
    for index, column in enumerate(columns):
        where = f"columns[{index}]"
        _require(
            isinstance(column, dict) and set(column) == {"table", "column", "type"},
            f"{where} needs table, column, type",
        )
        _require(bool(_TABLE.match(str(column["table"]))), f"{where}.table must be schema.table in lower case")
        _require(str(column["type"]) in PhiType.values, f"{where}.type {column['type']!r} is not a PHI type")
        key = (column["table"], column["column"])
        _require(key not in seen, f"{where} repeats {column['table']}.{column['column']}")
        seen.add(key)
    classified = document.get("classified", [])
    _require(isinstance(classified, list), "classified must be a list of schema.table names")
    for index, name in enumerate(classified):
        _require(bool(_TABLE.match(str(name))), f"classified[{index}] must be schema.table in lower case")
    _require(len(set(classified)) == len(classified), "classified repeats a relation")
    patient_keys = document.get("patient_keys", [])
    _require(isinstance(patient_keys, list), "patient_keys must be a list")
    seen_keys = set()
    for index, entry in enumerate(patient_keys):
        where = f"patient_keys[{index}]"
        _require(
            isinstance(entry, dict) and set(entry) == {"table", "column", "key"}, f"{where} needs table, column, key"
        )
        _require(bool(_TABLE.match(str(entry["table"]))), f"{where}.table must be schema.table in lower case")
        _require(bool(_KEY_NAME.match(str(entry["key"]))), f"{where}.key must be a lower-case name such as patient_id")
        place = (entry["table"], entry["column"])
        _require(place not in seen_keys, f"{where} repeats {entry['table']}.{entry['column']}")
        seen_keys.add(place)
    masks = document.get("masks", {})
    _require(isinstance(masks, dict), "masks must be a mapping")
    for phi_type, row in masks.items():
        _require(phi_type in PhiType.values, f"masks.{phi_type} is not a PHI type")
        _require(isinstance(row, dict) and set(row) <= set(_KINDS), f"masks.{phi_type} keys must be among {_KINDS}")
        for kind, mask in row.items():
            _require(mask in Mask.values, f"masks.{phi_type}.{kind}: {mask!r} is not a mask")
    inference = document.get("inference", {})
    _require(isinstance(inference, dict), "inference must be a mapping")
    for phi_type, row in inference.items():
        _require(phi_type == "default" or phi_type in PhiType.values, f"inference.{phi_type} is not a PHI type")
        _require(isinstance(row, dict) and set(row) <= set(_KINDS), f"inference.{phi_type} keys must be among {_KINDS}")
        for kind, action in row.items():
            _require(action in InferenceAction.values, f"inference.{phi_type}.{kind}: {action!r} is not an action")
    defaults = inference.get("default")
    if defaults is not None:
        expected = {str(k): str(a) for k, a in DEFAULT_INFERENCE.items()}
        _require(defaults == expected, "inference.default documents the built-in defaults and cannot be changed here")


def _comparable(document: dict[str, Any]) -> dict[str, Any]:
    """The parts that are policy (version and name are bookkeeping)."""
    return {key: value for key, value in document.items() if key not in {"version", "datasource"}}


def import_document(datasource_name: str, text: str, actor: User, *, dry_run: bool = False) -> ImportResult:
    document = load(text)
    _require(document.get("datasource") in (None, datasource_name), "the document is for another data source")
    with transaction.atomic():
        # Lock the data source row: two imports at once must not both become "version N+1".
        datasource = DataSource.objects.select_for_update().get(name=datasource_name)
        before = export_document(datasource)
        _apply(datasource, document, actor)
        after = export_document(datasource)
        changed = _comparable(before) != _comparable(after)
        diff = "".join(
            difflib.unified_diff(
                dump(_comparable(before)).splitlines(keepends=True),
                dump(_comparable(after)).splitlines(keepends=True),
                fromfile=f"{datasource_name} v{datasource.policy_version}",
                tofile=f"{datasource_name} (imported)",
            )
        )
        if dry_run or not changed:
            transaction.set_rollback(True)
            return ImportResult(changed=changed, version=datasource.policy_version, diff=diff)
        version = record_change(datasource, actor, before, front="cli")
    return ImportResult(changed=True, version=version, diff=diff)


def record_change(
    datasource: DataSource,
    actor: User,
    before: dict[str, Any],
    *,
    front: str,
    principal: Principal | None = None,
    context: Context | None = None,
    ticket_id: int | None = None,
    summary: str = "",
    details: dict[str, Any] | None = None,
) -> int:
    """Bump the version, keep the new document, and audit before/after. Call inside the change's transaction
    (with the data source row locked), after the change; returns the new version number, or the old one when
    nothing that is policy changed.

    The executor records tags that followed data with the ticket's principal, context and id, and says what it
    added in ``details`` (approvals.tags_follow_data); ``actor`` is who the version is attributed to."""
    datasource.refresh_from_db()
    after = export_document(datasource)
    if _comparable(before) == _comparable(after):
        return datasource.policy_version
    diff = "".join(
        difflib.unified_diff(
            dump(_comparable(before)).splitlines(keepends=True),
            dump(_comparable(after)).splitlines(keepends=True),
            fromfile=f"{datasource.name} v{datasource.policy_version}",
            tofile=f"{datasource.name} v{datasource.policy_version + 1}",
        )
    )
    DataSource.objects.filter(pk=datasource.pk).update(policy_version=F("policy_version") + 1)
    datasource.refresh_from_db(fields=["policy_version"])
    after["version"] = datasource.policy_version
    stored = dump(after)
    PolicyVersion.objects.create(
        datasource=datasource,
        number=datasource.policy_version,
        document=stored,
        sha256=hashlib.sha256(stored.encode()).hexdigest(),
        changed_by=actor,
    )
    record(
        EventKind.POLICY_CHANGED,
        principal=principal or Principal(human=actor),
        context=context or Context(front=front),
        datasource=datasource.name,
        ticket_id=ticket_id,
        summary=summary or f"policy of {datasource.name} changed to version {datasource.policy_version}",
        details={**(details or {}), "before": before, "after": after, "diff": diff},
    )
    return datasource.policy_version


def _apply(datasource: DataSource, document: dict[str, Any], actor: User) -> None:
    approvals = document.get("approvals", {})
    datasource.approvals_default = approvals.get("default", datasource.approvals_default)
    datasource.approvals_ddl = approvals.get("ddl", datasource.approvals_ddl)
    datasource.approvals_bulk_write = approvals.get("bulk_write", datasource.approvals_bulk_write)
    datasource.save(update_fields=["approvals_default", "approvals_ddl", "approvals_bulk_write"])
    if "approvers" in document:
        ApproverRule.objects.filter(datasource=datasource).delete()
        for rule in document["approvers"]:
            created = ApproverRule.objects.create(
                datasource=datasource, risk=rule["risk"], mode=rule["mode"], count=rule["count"]
            )
            # Approver groups are named by the policy; membership comes from the identity provider's groups claim.
            created.groups.set([Group.objects.get_or_create(name=name)[0] for name in rule["groups"]])
    if "columns" in document:
        PhiColumn.objects.filter(datasource=datasource).delete()
        PhiColumn.objects.bulk_create(
            PhiColumn(
                datasource=datasource,
                schema_name=str(column["table"]).split(".")[0],
                table_name=str(column["table"]).split(".")[1],
                column_name=str(column["column"]),
                phi_type=str(column["type"]),
            )
            for column in document["columns"]
        )
    if "patient_keys" in document:
        PatientKeyColumn.objects.filter(datasource=datasource).delete()
        PatientKeyColumn.objects.bulk_create(
            PatientKeyColumn(
                datasource=datasource,
                schema_name=str(entry["table"]).split(".")[0],
                table_name=str(entry["table"]).split(".")[1],
                column_name=str(entry["column"]),
                key_name=str(entry["key"]),
            )
            for entry in document["patient_keys"]
        )
    if "classified" in document:
        _apply_classified(datasource, [str(name) for name in document["classified"]], actor)
    if "masks" in document:
        MaskRule.objects.filter(datasource=datasource).delete()
        MaskRule.objects.bulk_create(
            MaskRule(datasource=datasource, phi_type=phi_type, identity_kind=kind, mask=mask)
            for phi_type, row in document["masks"].items()
            for kind, mask in row.items()
            if DEFAULT_MASKS[PhiType(phi_type)][IdentityKind(kind)] != mask  # store only departures from defaults
        )
    if "inference" in document:
        InferenceRule.objects.filter(datasource=datasource).delete()
        InferenceRule.objects.bulk_create(
            InferenceRule(datasource=datasource, phi_type=phi_type, identity_kind=kind, action=action)
            for phi_type, row in document["inference"].items()
            if phi_type != "default"
            for kind, action in row.items()
        )


def _apply_classified(datasource: DataSource, names: list[str], actor: User) -> None:
    """Markers for exactly the listed relations; one that stays keeps who classified it, when and how."""
    wanted = {tuple(name.split(".", 1)) for name in names}
    existing = ClassifiedRelation.objects.filter(datasource=datasource)
    for marker in existing:
        if (marker.schema_name, marker.table_name) not in wanted:
            marker.delete()
    have = existing.names()
    ClassifiedRelation.objects.bulk_create(
        ClassifiedRelation(
            datasource=datasource,
            schema_name=schema,
            table_name=table,
            how=ClassificationSource.POLICY_DOCUMENT,
            classified_by=actor,
        )
        for schema, table in sorted(wanted - have)
    )
