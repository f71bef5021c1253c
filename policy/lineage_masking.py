"""From column lineage to masks, and to the read guard, for one kind of viewer.

The rule (docs/invariants.md, 4): a PHI value may influence only its own output column, and only through that
column's mask. Everything else it influences is inference, held for review by default for agents.

* An output that *is* a source value (DIRECT) gets that column's mask: last four, year, pseudonym all fit.
* A computed value (transformed, or lineage unknown) never carries a column's mask or pseudonym: a format mask
  could leak (``reverse(ssn)`` "last four" shows the first four digits) and a pseudonym of a computed value is
  an oracle (``CASE WHEN false THEN full_name ELSE 'guess' END`` hashed with the name key checks guesses). It is
  redacted (or nulled when a source's mask is null). Redacted is not enough on its own: whether the computation
  fails, how long it takes and whether it is NULL would still depend on the value. So the guard *withholds* it:
  the statement is rewritten so that the expression is a constant and never runs (policy.withholding).
* An aggregate other than a count of rows over PHI (``max(ssn)``, ``count(ssn)``, ``count(DISTINCT name)``) is
  inference: which value is the maximum, or how many are not NULL, is not what the mask reveals.
* A count of rows passes.

Inference channels the guard holds, whatever syntax carries them: filters, joins, grouping, ordering, DISTINCT
and set operations that compare rows, arguments of set-returning functions, LIMIT/OFFSET, CASE conditions,
computations on PHI that run (outside a withheld output), functions whose bodies lineage cannot see, and
incomplete lineage over a PHI table. The policy says per type and kind of identity: allow, hold or deny.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from policy.classifier import Classification
from policy.defaults import DEFAULT_INFERENCE
from policy.lineage_types import Derivation, Lineage, OutputColumn, SourceColumn
from policy.masking import ColumnMask, MaskingPlan
from policy.models import IdentityKind, InferenceAction, Mask
from policy.patient_keys import key_columns
from policy.target_catalog import Tag, TargetCatalog, plan_masks

_STRICTNESS = [Mask.PASS, Mask.GENERALIZE, Mask.PARTIAL, Mask.HASH, Mask.REDACT, Mask.NULL]
_AGGREGATED = frozenset({Derivation.AGGREGATE, Derivation.COUNT})


def _phi_tags(sources: Iterable[SourceColumn], catalog: TargetCatalog) -> list[Tag]:
    tags = catalog.tags_by_column
    return [tag for source in sources if (tag := tags.get((source.schema, source.table, source.column)))]


def mask_for_output(output: OutputColumn, catalog: TargetCatalog, identity_kind: str) -> ColumnMask | None:
    """The mask lineage gives one output column (None: the value passes as it is)."""
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
        if len(kinds) == 1 and strictest == Mask.HASH and output.foreign:
            # Beside a literal (another UNION arm, a VALUES row), equal pseudonyms would check a guess.
            return ColumnMask(Mask.REDACT, tag.phi_type, f"value of {origin} beside values written in the statement")
        if len(kinds) == 1:
            return ColumnMask(strictest, tag.phi_type, f"value of {origin}")
        return ColumnMask(Mask.REDACT, tag.phi_type, f"one of several PHI columns ({origin})")
    if strictest == Mask.NULL:
        return ColumnMask(Mask.NULL, tag.phi_type, f"derived from {origin}")
    # Never a pseudonym: pseudonyms are for direct references only (a computed value hashed with a column's
    # key lets guesses be checked against real pseudonyms).
    return ColumnMask(Mask.REDACT, tag.phi_type, f"derived from {origin}")


def plan_from_lineage(lineage: Lineage, catalog: TargetCatalog, identity_kind: str) -> MaskingPlan:
    return MaskingPlan(tuple(mask_for_output(output, catalog, identity_kind) for output in lineage.outputs))


@dataclass(frozen=True)
class WithheldColumn:
    """A result column whose expression is replaced by a constant before the statement runs."""

    target: int  # index in the statement's own target list
    name: str  # the column name PostgreSQL would have given it


@dataclass(frozen=True)
class InferenceVerdict:
    action: str  # allow | hold | deny
    reasons: tuple[str, ...]
    withheld: tuple[WithheldColumn, ...] = ()


class _Judgement:
    """Actions and reasons collected while judging one statement, folded into a verdict at the end."""

    def __init__(self, catalog: TargetCatalog, identity_kind: str) -> None:
        self.catalog = catalog
        self.identity_kind = identity_kind
        self.actions: list[str] = []
        self.reasons: list[str] = []

    def columns(self, sources: Iterable[SourceColumn], how: str) -> None:
        """PHI columns used in a way that reveals more than their masks: the rule per type and kind."""
        for tag in sorted(_phi_tags(sources, self.catalog), key=lambda t: (t.table_name, t.column_name)):
            action = self.catalog.inference_for(tag.phi_type, self.identity_kind)
            if action != InferenceAction.ALLOW:
                self.actions.append(action)
                self.reasons.append(
                    f"{how} PHI column {tag.table_name}.{tag.column_name} ({tag.phi_type}), which can reveal its values"
                )

    def unknown(self, reasons: Iterable[str]) -> None:
        """Something lineage cannot see over PHI: the kind's default (fail closed)."""
        default = default_inference(self.identity_kind)
        if default != InferenceAction.ALLOW:
            self.actions.append(default)
            self.reasons.extend(reasons)

    def verdict(self, withheld: Sequence[WithheldColumn]) -> InferenceVerdict:
        reasons = tuple(dict.fromkeys(self.reasons))
        if InferenceAction.DENY in self.actions:
            return InferenceVerdict(InferenceAction.DENY, reasons)
        if self.actions:
            return InferenceVerdict(InferenceAction.HOLD, reasons)
        return InferenceVerdict(InferenceAction.ALLOW, (), tuple(withheld))


def default_inference(identity_kind: str) -> InferenceAction:
    """What a kind of identity gets for inference the policy has no rule for (lineage unknown): hold by default."""
    return DEFAULT_INFERENCE.get(IdentityKind(identity_kind), InferenceAction.HOLD)


_FILTERS = "filters, sorts, groups, joins or counts rows by"
_COMPUTES = "computes on (where errors or timing depend on it)"
_AGGREGATES = "aggregates (beyond a count of rows)"


def inference_verdict(lineage: Lineage, catalog: TargetCatalog, identity_kind: str) -> InferenceVerdict:
    """Allow, hold or deny a read by its lineage; when allowed, which outputs are withheld."""
    judged = _Judgement(catalog, identity_kind)
    judged.columns(lineage.filters, _FILTERS)
    judged.columns(lineage.computed_on, _COMPUTES)
    calls = set(lineage.calls)
    withheld: list[WithheldColumn] = []
    for output in lineage.outputs:
        mask = _output_mask(output, catalog, identity_kind)
        computed = mask is not None and (output.unknown or output.derivation not in (Derivation.DIRECT, *_AGGREGATED))
        if computed and output.target is not None:
            withheld.append(WithheldColumn(output.target, output.name))
            continue  # replaced by a constant: nothing in it runs
        judged.columns(output.inner_filters, _FILTERS)
        judged.columns(output.computed_on, _COMPUTES)
        calls |= output.calls
        if computed:
            judged.columns(output.sources, _COMPUTES)
        elif mask is not None and output.derivation in _AGGREGATED:
            judged.columns(output.sources, _AGGREGATES)
    has_phi = bool(catalog.tagged_columns)
    untrusted = sorted(_display(call) for call in calls if not _trusted(call, catalog))
    if untrusted and has_phi:
        judged.unknown(f"calls {name}(), whose body lineage cannot see (it may read PHI)" for name in untrusted)
    if lineage.unknown_reasons and not lineage.relations.isdisjoint(catalog.tagged_tables):
        judged.unknown(f"lineage incomplete over a PHI table: {reason}" for reason in lineage.unknown_reasons)
    return judged.verdict(withheld)


def _output_mask(output: OutputColumn, catalog: TargetCatalog, identity_kind: str) -> ColumnMask | None:
    """The lineage mask, redacting any value computed by a function lineage cannot see into."""
    mask = mask_for_output(output, catalog, identity_kind)
    if output.derivation != Derivation.DIRECT and any(not _trusted(call, catalog) for call in output.calls):
        mask = _stricter(mask, ColumnMask(Mask.REDACT, "unknown", "computed by a function lineage cannot see"))
    return mask


def _trusted(call: tuple[str | None, str], catalog: TargetCatalog) -> bool:
    """A pg_catalog function that no other schema also defines (else PostgreSQL could pick a user's one), or one
    of initdb's ``information_schema._pg_*`` helpers (pure functions over catalogs, which JDBC's key queries
    call by their qualified name; only a superuser could add to that schema)."""
    schema, name = call
    known = catalog.functions.by_qualified_name
    if schema == "information_schema":
        return name.startswith("_pg_") and (schema, name) in known
    if schema not in (None, "pg_catalog"):
        return False
    return ("pg_catalog", name) in known and name not in catalog.names_outside_pg_catalog


def _display(call: tuple[str | None, str]) -> str:
    schema, name = call
    return f"{schema}.{name}" if schema else name


def _untrusted_functions(classification: Classification, catalog: TargetCatalog) -> list[str]:
    """Functions whose body lineage cannot see: anything outside pg_catalog, or a name that another schema
    also defines (PostgreSQL could pick a user ``count(text)`` over the built-in one)."""
    untrusted = []
    for written in classification.functions:
        schema, _, name = written.rpartition(".")
        if not _trusted((schema or None, name.lower()), catalog):
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

    The plan also names the output columns that are unmodified patient keys (policy.patient_keys.key_columns).
    """
    keys = key_columns(origins, lineage, catalog)
    fallback = plan_masks(origins, classification, catalog, identity_kind)
    if lineage is None or len(lineage.outputs) != len(origins) or any(o.name == "*" for o in lineage.outputs):
        return dataclasses.replace(fallback, patient_keys=keys) if keys else fallback
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
    return MaskingPlan(tuple(columns), patient_keys=keys)


def strictest_plan(plans: Sequence[MaskingPlan]) -> MaskingPlan:
    """Per column, the strictest of several plans for the same result: what a result shown to several kinds of
    viewer at once (the ticket page's preview) may reveal is what the strictest of them may see."""
    columns: list[ColumnMask | None] = []
    for specs in zip(*(plan.columns for plan in plans), strict=True):
        strictest: ColumnMask | None = None
        for spec in specs:
            strictest = _stricter(strictest, spec)
        columns.append(strictest)
    return MaskingPlan(tuple(columns))
