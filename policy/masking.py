"""Masking values in results, and the v1 plan that decides which output column gets which mask.

Values arrive as PostgreSQL's own text output (see policy.target_catalog.text_only_adapters), so a mask works on
exactly what would otherwise reach the agent. The v1 plan is column-level and fails closed:

* a column whose origin PostgreSQL reports (RowDescription table OID + attribute number) is masked by the rule
  for its tag's semantic type and the viewer's kind of identity (policy.defaults, overridable per data source);
* a column whose origin is a view, materialized view or unknown relation is redacted (lineage unknown);
* a computed column (no origin) is redacted when the statement touches a PHI-tagged or non-table relation,
  or calls a function outside pg_catalog (which could read PHI out of sight).

The lineage engine (issue 3) will replace the plan; the masks themselves stay.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from policy.models import Mask, PhiType

REDACTED = "[redacted]"
_YEAR = re.compile(r"^(\d{4})-")


def require_pseudonym_key() -> bytes:
    key = settings.PSEUDONYM_KEY
    if not key or len(key) < 32:
        raise ImproperlyConfigured("PSEUDONYM_KEY (or PSEUDONYM_KEY_FILE) must be set to at least 32 characters")
    return key.encode("utf-8")


def pseudonym(value: str, phi_type: str, key: bytes) -> str:
    """Stable for a given key and type, so equal values still join and group; useless without the key."""
    mac = hmac.new(key, f"{phi_type}\x00{value}".encode(), hashlib.sha256).hexdigest()
    return f"{phi_type}_{mac[:16]}"


def mask_value(value: str | None, mask: str, phi_type: str, key: bytes) -> str | None:
    if value is None or mask == Mask.PASS:
        return value
    if mask == Mask.NULL:
        return None
    if mask == Mask.HASH:
        return pseudonym(value, phi_type, key)
    if mask == Mask.PARTIAL:
        tail = re.sub(r"[^0-9A-Za-z]", "", value)[-4:]
        return f"***{tail}" if len(tail) == 4 else REDACTED
    if mask == Mask.GENERALIZE:
        return _generalize(value, phi_type)
    return REDACTED


def _generalize(value: str, phi_type: str) -> str:
    """Dates to their year; ZIP codes to their first three digits (the HIPAA Safe Harbor forms)."""
    if phi_type == PhiType.ZIP:
        digits = re.sub(r"[^0-9]", "", value)
        return digits[:3] + "00" if len(digits) >= 3 else REDACTED
    match = _YEAR.match(value)
    return match.group(1) if match else REDACTED


@dataclass(frozen=True)
class ColumnMask:
    mask: str
    phi_type: str
    why: str


@dataclass(frozen=True)
class MaskingPlan:
    """One entry per output column: None passes the value, a ColumnMask transforms it."""

    columns: tuple[ColumnMask | None, ...]

    @property
    def is_identity(self) -> bool:
        return all(column is None for column in self.columns)

    def apply(self, rows: Sequence[Sequence[str | None]], key: bytes) -> list[list[str | None]]:
        if self.is_identity:
            return [list(row) for row in rows]
        masks = self.columns
        return [
            [
                value if spec is None else mask_value(value, spec.mask, spec.phi_type, key)
                for value, spec in zip(row, masks, strict=True)
            ]
            for row in rows
        ]

    def describe(self, column_names: Sequence[str]) -> dict[str, dict[str, str]]:
        """For the audit record: which column got which mask and why (no values)."""
        return {
            name: {"mask": spec.mask, "phi_type": spec.phi_type, "why": spec.why}
            for name, spec in zip(column_names, self.columns, strict=True)
            if spec is not None
        }
