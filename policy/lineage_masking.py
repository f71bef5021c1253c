"""From column lineage to masks and to the inference guard, for one kind of viewer.

* An output that *is* a source value (DIRECT) gets that column's mask: last four, year, pseudonym all fit.
* A transformed or aggregated value can have any shape, so a format-based mask (last four, year) could leak
  (``reverse(ssn)`` "last four" shows the first four digits): it is pseudonymised if every source's mask is a
  pseudonym, nulled if any is null, and otherwise redacted.
* A count reveals only cardinality and passes.
* An output whose lineage is unknown is redacted.

Inference: a statement that filters, sorts, groups or joins on a PHI column can reveal values without returning
them (``WHERE ssn LIKE '123%'``). The policy says per type and kind of identity: allow, hold or deny; incomplete
lineage counts as touching PHI under the kind's default.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from policy.classifier import Classification
from policy.defaults import DEFAULT_INFERENCE
from policy.lineage_types import Derivation, Lineage, OutputColumn, SourceColumn
from policy.masking import ColumnMask, MaskingPlan
from policy.models import IdentityKind, InferenceAction, Mask
from policy.target_catalog import Tag, TargetCatalog, plan_masks

_STRICTNESS = [Mask.PASS, Mask.GENERALIZE, Mask.PARTIAL, Mask.HASH, Mask.REDACT, Mask.NULL]


def _phi_tags(sources: Iterable[SourceColumn], catalog: TargetCatalog) -> list[Tag]:
    tags = catalog.tags_by_column
    return [tag for source in sources if (tag := tags.get((source.schema, source.table, source.column)))]


def mask_for_output(output: OutputColumn, catalog: TargetCatalog, identity_kind: str) -> ColumnMask | None:
    if output.unknown:
        return ColumnMask(Mask.REDACT, "unknown", "lineage unknown")
    if output.derivation == Derivation.COUNT:
        return None
    tags = _phi_tags(output.sources, catalog)
    masks = [(catalog.mask_for(tag.phi_type, identity_kind), tag) for tag in tags]
    masks = [(mask, tag) for mask, tag in masks if mask != Mask.PASS]
    if not masks:
        return None
    origin = ", ".join(sorted({f"{t.table_name}.{t.column_name}" for _, t in masks}))
    strictest, tag = max(masks, key=lambda pair: _STRICTNESS.index(Mask(pair[0])))
    if output.derivation == Derivation.DIRECT:
        kinds = {(mask, t.phi_type) for mask, t in masks}
        if len(kinds) == 1:
            return ColumnMask(strictest, tag.phi_type, f"value of {origin}")
        return ColumnMask(Mask.REDACT, tag.phi_type, f"one of several PHI columns ({origin})")
    if strictest == Mask.NULL:
        return ColumnMask(Mask.NULL, tag.phi_type, f"derived from {origin}")
    if all(mask == Mask.HASH for mask, _ in masks):
        return ColumnMask(Mask.HASH, tag.phi_type, f"derived from {origin}")
    return ColumnMask(Mask.REDACT, tag.phi_type, f"derived from {origin}")


def plan_from_lineage(lineage: Lineage, catalog: TargetCatalog, identity_kind: str) -> MaskingPlan:
    return MaskingPlan(tuple(mask_for_output(output, catalog, identity_kind) for output in lineage.outputs))


@dataclass(frozen=True)
class InferenceVerdict:
    action: str  # allow | hold | deny
    reasons: tuple[str, ...]


def inference_verdict(lineage: Lineage, catalog: TargetCatalog, identity_kind: str) -> InferenceVerdict:
    reasons: list[str] = []
    actions: list[str] = []
    for tag in sorted(_phi_tags(lineage.filters, catalog), key=lambda t: (t.table_name, t.column_name)):
        action = catalog.inference_for(tag.phi_type, identity_kind)
        if action != InferenceAction.ALLOW:
            actions.append(action)
            reasons.append(
                f"filters, sorts, groups or joins on PHI column {tag.table_name}.{tag.column_name} ({tag.phi_type}), "
                "which can reveal its values"
            )
    touches_phi = any(
        (schema, table) in {(t.schema_name, t.table_name) for t in catalog.tags_by_column.values()}
        for schema, table in lineage.relations
    )
    if lineage.unknown_reasons and touches_phi:
        default = DEFAULT_INFERENCE.get(IdentityKind(identity_kind), InferenceAction.HOLD)
        if default != InferenceAction.ALLOW:
            actions.append(default)
            reasons.extend(f"lineage incomplete over a PHI table: {reason}" for reason in lineage.unknown_reasons)
    if InferenceAction.DENY in actions:
        return InferenceVerdict(InferenceAction.DENY, tuple(reasons))
    if actions:
        return InferenceVerdict(InferenceAction.HOLD, tuple(reasons))
    return InferenceVerdict(InferenceAction.ALLOW, ())


def _untrusted_functions(classification: Classification, catalog: TargetCatalog) -> list[str]:
    """Functions whose body lineage cannot see: anything outside pg_catalog, or a name that another schema
    also defines (PostgreSQL could pick a user ``count(text)`` over the built-in one)."""
    known = catalog.functions.by_qualified_name
    untrusted = []
    for written in classification.functions:
        schema, _, name = written.rpartition(".")
        name = name.lower()
        outside_catalog = bool(schema) and schema != "pg_catalog"
        if outside_catalog or ("pg_catalog", name) not in known or name in catalog.names_outside_pg_catalog:
            untrusted.append(written)
    return untrusted


def _stricter(first: ColumnMask | None, second: ColumnMask | None) -> ColumnMask | None:
    if first is None:
        return second
    if second is None:
        return first
    return max(first, second, key=lambda spec: _STRICTNESS.index(Mask(spec.mask)))


def plan_for_result(
    origins: Sequence[tuple[int, int]],
    classification: Classification,
    lineage: Lineage | None,
    catalog: TargetCatalog,
    identity_kind: str,
) -> MaskingPlan:
    """The masking plan for one result: lineage where it is established, else the fail-closed column plan.

    Per column, the stricter of (a) the lineage mask and (b) the mask of the column's reported origin when that
    origin is itself tagged. Outputs computed by a function lineage cannot see into are redacted.
    """
    fallback = plan_masks(origins, classification, catalog, identity_kind)
    if lineage is None or len(lineage.outputs) != len(origins) or any(o.name == "*" for o in lineage.outputs):
        return fallback
    untrusted = _untrusted_functions(classification, catalog)
    columns: list[ColumnMask | None] = []
    for output, (table_oid, attnum), v1 in zip(lineage.outputs, origins, fallback.columns, strict=True):
        from_lineage = mask_for_output(output, catalog, identity_kind)
        if untrusted and output.derivation != Derivation.DIRECT:
            from_lineage = _stricter(
                from_lineage, ColumnMask(Mask.REDACT, "unknown", f"computed by {', '.join(untrusted)}")
            )
        from_origin = v1 if (table_oid, attnum) in catalog.tagged_columns else None
        columns.append(_stricter(from_lineage, from_origin))
    return MaskingPlan(tuple(columns))
