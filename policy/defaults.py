"""Default masks and inference actions per semantic type and kind of identity.

Agents get the strictest defaults: an agent never sees a name, an identifier or a free-text note in clear, and
filtering or sorting on a PHI column holds the statement for approval. A data source's policy document can
override any cell; what it does not mention falls back to this table.
"""

from __future__ import annotations

from policy.models import IdentityKind, InferenceAction, Mask, PhiType

_STRICT = {IdentityKind.AGENT: Mask.REDACT, IdentityKind.ENGINEER: Mask.REDACT, IdentityKind.REVIEWER: Mask.PASS}


def _row(agent: Mask, engineer: Mask, reviewer: Mask) -> dict[IdentityKind, Mask]:
    return {IdentityKind.AGENT: agent, IdentityKind.ENGINEER: engineer, IdentityKind.REVIEWER: reviewer}


DEFAULT_MASKS: dict[PhiType, dict[IdentityKind, Mask]] = {
    PhiType.NAME: _row(Mask.HASH, Mask.HASH, Mask.PASS),
    PhiType.ADDRESS: dict(_STRICT),
    PhiType.ZIP: _row(Mask.GENERALIZE, Mask.GENERALIZE, Mask.PASS),
    PhiType.BIRTH_DATE: _row(Mask.GENERALIZE, Mask.GENERALIZE, Mask.PASS),
    PhiType.SERVICE_DATE: _row(Mask.GENERALIZE, Mask.GENERALIZE, Mask.PASS),
    PhiType.PHONE: _row(Mask.PARTIAL, Mask.PARTIAL, Mask.PASS),
    PhiType.FAX: _row(Mask.PARTIAL, Mask.PARTIAL, Mask.PASS),
    PhiType.EMAIL: dict(_STRICT),
    PhiType.SSN: _row(Mask.PARTIAL, Mask.PARTIAL, Mask.PARTIAL),
    PhiType.MRN: _row(Mask.HASH, Mask.HASH, Mask.PASS),
    PhiType.HEALTH_PLAN: _row(Mask.HASH, Mask.HASH, Mask.PASS),
    PhiType.ACCOUNT: _row(Mask.HASH, Mask.HASH, Mask.PASS),
    PhiType.LICENSE: dict(_STRICT),
    PhiType.VEHICLE: dict(_STRICT),
    PhiType.DEVICE: _row(Mask.HASH, Mask.HASH, Mask.PASS),
    PhiType.URL: dict(_STRICT),
    PhiType.IP: _row(Mask.HASH, Mask.HASH, Mask.PASS),
    PhiType.BIOMETRIC: _row(Mask.NULL, Mask.NULL, Mask.NULL),
    PhiType.PHOTO: _row(Mask.NULL, Mask.NULL, Mask.NULL),
    PhiType.OTHER_ID: _row(Mask.HASH, Mask.HASH, Mask.PASS),
    PhiType.CLINICAL_NOTES: dict(_STRICT),
}

DEFAULT_INFERENCE: dict[IdentityKind, InferenceAction] = {
    IdentityKind.AGENT: InferenceAction.HOLD,
    IdentityKind.ENGINEER: InferenceAction.ALLOW,
    IdentityKind.REVIEWER: InferenceAction.ALLOW,
}

assert set(DEFAULT_MASKS) == set(PhiType), "every PHI type needs a default mask"
