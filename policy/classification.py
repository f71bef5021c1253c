"""Which relations the PHI policy has classified, and holding agents' reads of the others.

A relation without PHI tags is ambiguous: it may hold no PHI, or nobody may have looked at it yet (a table the
owner created outside the gateway, a copy made by an approved statement whose lineage could not be followed).
Reading the second kind would hand raw PHI to an agent, so agents read only relations with a positive marker
(``policy.models.ClassifiedRelation``, loaded into ``TargetCatalog.classified_relations``). Pure functions over
the catalog snapshot: no database access here.
"""

from __future__ import annotations

from collections.abc import Iterable

from policy.classifier import Verdict
from policy.models import IdentityKind
from policy.target_catalog import TargetCatalog

# PostgreSQL's own schemas: schema metadata, never user data; what in them exposes values is the read policy's
# business (policy.exposure), not classification's.
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})


def _resolved(written: str, catalog: TargetCatalog) -> tuple[str, str] | None:
    """(schema, name) the snapshot resolves a written relation name to, or None when it does not know it."""
    parts = written.split(".")
    schema, name = (parts[-2], parts[-1]) if len(parts) >= 2 else (None, parts[-1])
    return catalog.resolve(schema, name)


def unclassified_relations(relations: Iterable[str], catalog: TargetCatalog) -> list[str]:
    """The relations (as ``schema.name``) among ``relations`` (names as written, e.g. Classification.relations)
    that the policy has not classified, sorted.

    Skipped: PostgreSQL's own schemas, and names the snapshot does not know. An unknown name is either not a
    relation at all (PostgreSQL answers 42P01) or one created after the snapshot; the gateway refreshes the
    snapshot for such names before deciding, and a result column whose origin the snapshot does not know is
    redacted (policy.target_catalog.plan_masks), so no value of an unknown relation reaches an agent in clear.
    """
    unclassified: set[str] = set()
    for written in relations:
        written_schema = written.split(".")[-2] if "." in written else None
        if written_schema in SYSTEM_SCHEMAS:
            continue
        resolved = _resolved(written, catalog)
        if resolved is None or resolved[0] in SYSTEM_SCHEMAS:
            continue
        if resolved not in catalog.classified_relations:
            unclassified.add(f"{resolved[0]}.{resolved[1]}")
    return sorted(unclassified)


def held_until_classified(
    verdict: Verdict, reasons: list[str], relations: Iterable[str], catalog: TargetCatalog, identity_kind: str
) -> tuple[Verdict, list[str]]:
    """An agent's allowed statement over an unclassified relation becomes held (a ticket for a human).

    People are not held: an engineer or reviewer is accountable for what they read, and the masks of the tagged
    columns still apply to them. Denied and already-held statements keep their verdict and reasons.
    """
    if verdict != Verdict.ALLOWED or identity_kind != IdentityKind.AGENT:
        return verdict, reasons
    unclassified = unclassified_relations(relations, catalog)
    if not unclassified:
        return verdict, reasons
    return Verdict.HELD, [f"relation {name} has not been classified by the PHI policy yet" for name in unclassified]
