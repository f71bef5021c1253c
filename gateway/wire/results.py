"""Result rows and descriptions as the client sees them: masked per the statement's decision.

Sans-IO and shared by the relay task and the fast path of ``gateway.wire.session``: a RowDescription frame is
turned into a ``ResultShape`` once per decision (memoised on the decision), and each DataRow is masked with its
plan. A column whose origin the policy cannot place is redacted (``_plan_for``: unknown provenance fails closed).
"""

from __future__ import annotations

from dataclasses import dataclass

from audit.recorder import masking_details
from audit.wire_lines import json_text
from gateway.pgwire.backend import DataRow, FieldDescription, RowDescription
from gateway.pipeline import Decision
from policy.binary_text import binary_to_text
from policy.lineage_masking import plan_for_result
from policy.masking import ColumnMask, MaskingPlan, mask_value

TEXT_OID = 25


@dataclass(frozen=True)
class ResultShape:
    """A result description under one decision: worked out once, reused while the decision is cached."""

    source: RowDescription  # as the upstream sent it
    plan: MaskingPlan | None
    description: bytes  # the RowDescription the client is sent (masked columns announced as text), encoded
    fields: tuple[FieldDescription, ...]  # as the upstream described them (formats and types of the values)
    masking: dict[str, dict[str, str]]  # for the audit record
    columns: list[str]
    masking_json: str  # the audit details' masking fields, serialized (without the braces)


def masking_text(masking: dict[str, dict[str, str]]) -> str:
    """A result's masking as the fields of its audit details (audit.recorder.masking_details), braces left off."""
    return json_text(masking_details(masking))[1:-1]


def result_shape(frame: bytes, decision: Decision | None, identity_kind: str) -> ResultShape:
    """The shape of a RowDescription frame (keyed by its exact bytes, so a repeat is not even decoded)."""
    key = ("result", identity_kind, frame)
    memo = decision.wire_memo if decision is not None else {}
    shape = memo.get(key)
    if shape is None:
        description = RowDescription.decode_body(frame[5:])
        plan = _plan_for(description, decision, identity_kind)
        names = [f.name for f in description.fields]
        masking = plan.describe(names) if plan else {}
        shape = ResultShape(
            source=description,
            plan=plan,
            description=_rewrite_description(description, plan).encode(),
            fields=description.fields,
            masking=masking,
            columns=names,
            masking_json=masking_text(masking),
        )
        if len(memo) < 64:
            memo[key] = shape
    return shape


def _plan_for(description: RowDescription, decision: Decision | None, identity_kind: str) -> MaskingPlan | None:
    if not description.fields:
        return None
    if decision is None or decision.classification is None or decision.catalog is None:
        # Unknown provenance: fail closed, every column redacted.
        return MaskingPlan(
            tuple(ColumnMask("redact", "unknown", "statement unknown to the gateway") for _ in description.fields)
        )
    origins = [(field.table_oid, field.column_attnum) for field in description.fields]
    return plan_for_result(origins, decision.classification, decision.lineage, decision.catalog, identity_kind)


def _rewrite_description(description: RowDescription, plan: MaskingPlan | None) -> RowDescription:
    """Masked columns are announced as text: a mask's output (``***1234``, a pseudonym) is text, in either format."""
    if plan is None or plan.is_identity:
        return description
    fields = tuple(
        field if spec is None else FieldDescription(field.name, 0, 0, TEXT_OID, -1, -1, field.format)
        for field, spec in zip(description.fields, plan.columns, strict=True)
    )
    return RowDescription(fields)


_KEY: bytes | None = None


def _pseudonym_key() -> bytes:
    global _KEY
    if _KEY is None:
        from policy.masking import require_pseudonym_key

        _KEY = require_pseudonym_key()
    return _KEY


def mask_row(row: DataRow, plan: MaskingPlan, fields: tuple[FieldDescription, ...]) -> DataRow:
    key = _pseudonym_key()
    values: list[bytes | None] = []
    for index, (value, spec) in enumerate(zip(row.values, plan.columns, strict=True)):
        if spec is None or value is None:
            values.append(value)
            continue
        field = fields[index] if index < len(fields) else None
        if field is not None and field.format == 1:
            text = binary_to_text(field.type_oid, value)
            masked = mask_value(text, spec.mask, spec.phi_type, key) if text is not None else "[redacted]"
        else:
            masked = mask_value(value.decode("utf-8", "replace"), spec.mask, spec.phi_type, key)
        values.append(None if masked is None else masked.encode("utf-8"))
    return DataRow(tuple(values))
