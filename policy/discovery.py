"""Proposing PHI tags for a target database: column names, types, and patterns in sampled values.

Pure functions over column descriptions and samples, so the heuristics are testable without a database. The
proposal is only ever a suggestion: ``discover_phi`` prints it as a policy diff, and a human imports it.
Sampled values never leave this module: only which rule matched and how often.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from policy.models import PhiType

TEXT_TYPES = frozenset({"text", "character varying", "character", "varchar", "char", "name", "citext"})
DATE_TYPES = frozenset({"date", "timestamp without time zone", "timestamp with time zone"})

# Name tokens (split on '_' and case changes) that mark a column, most specific first.
_NAME_RULES: tuple[tuple[frozenset[str], PhiType], ...] = (
    (frozenset({"ssn", "social"}), PhiType.SSN),
    (frozenset({"mrn"}), PhiType.MRN),
    (frozenset({"email", "mail"}), PhiType.EMAIL),
    (frozenset({"fax"}), PhiType.FAX),
    (frozenset({"phone", "telephone", "mobile", "cell"}), PhiType.PHONE),
    (frozenset({"dob", "birth", "birthdate", "birthday"}), PhiType.BIRTH_DATE),
    (frozenset({"zip", "zipcode", "postcode", "postal"}), PhiType.ZIP),
    (frozenset({"address", "street", "addr"}), PhiType.ADDRESS),
    (frozenset({"ip"}), PhiType.IP),
    (frozenset({"url", "website"}), PhiType.URL),
    (frozenset({"vin", "plate"}), PhiType.VEHICLE),
    (frozenset({"license", "licence"}), PhiType.LICENSE),
    (frozenset({"photo", "portrait", "headshot"}), PhiType.PHOTO),
    (frozenset({"fingerprint", "biometric", "retina"}), PhiType.BIOMETRIC),
    (frozenset({"insurance", "member", "plan"}), PhiType.HEALTH_PLAN),
    (frozenset({"account", "acct"}), PhiType.ACCOUNT),
    (frozenset({"device", "serial", "imei"}), PhiType.DEVICE),
)
_PERSON_NAME_TOKENS = frozenset({"name", "firstname", "lastname", "surname", "fullname", "forename"})
_NOT_A_PERSON = frozenset({"drug", "product", "file", "table", "code", "diagnosis", "description", "user"})
_SERVICE_DATE_TOKENS = frozenset({"admitted", "admission", "discharged", "discharge", "visit", "service", "seen"})
_NOTES_TOKENS = frozenset({"notes", "note", "narrative", "comments", "comment", "history", "summary"})

# Value patterns: a column is proposed when most non-empty sampled values match.
_VALUE_RULES: tuple[tuple[re.Pattern[str], PhiType], ...] = (
    (re.compile(r"^\d{3}-\d{2}-\d{4}$"), PhiType.SSN),
    (re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", re.IGNORECASE), PhiType.EMAIL),
    (re.compile(r"^(\+?1[-. ]?)?\(?\d{3}\)?[-. ]?\d{3}[-. ]?\d{4}$"), PhiType.PHONE),
    (re.compile(r"^MRN[-:]?\d{6,}$", re.IGNORECASE), PhiType.MRN),
    (re.compile(r"^\d+ [A-Za-z][A-Za-z .]+, [A-Za-z .]+, [A-Z]{2} \d{5}(-\d{4})?$"), PhiType.ADDRESS),
)
MATCH_SHARE = 0.8


@dataclass(frozen=True)
class ColumnInfo:
    schema: str
    table: str
    column: str
    data_type: str
    references_person: bool = False  # the table has a foreign key to a table holding person identifiers


@dataclass(frozen=True)
class Proposal:
    schema: str
    table: str
    column: str
    phi_type: PhiType
    why: str


def _tokens(name: str) -> set[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1_\2", name)
    parts = [part for part in re.split(r"[^a-zA-Z0-9]+", spaced.lower()) if part]
    return set(parts) | {"".join(parts)}


def _by_name(column: ColumnInfo) -> tuple[PhiType, str] | None:
    tokens = _tokens(column.column)
    is_text = column.data_type in TEXT_TYPES
    for words, phi_type in _NAME_RULES:
        if tokens & words:
            return phi_type, f"column name ({', '.join(sorted(tokens & words))})"
    if is_text and tokens & _PERSON_NAME_TOKENS and not tokens & _NOT_A_PERSON and column.table != "users":
        return PhiType.NAME, "column name (a person's name)"
    if is_text and tokens & _NOTES_TOKENS:
        return PhiType.CLINICAL_NOTES, "free-text column"
    if column.data_type in DATE_TYPES and column.references_person and (tokens & _SERVICE_DATE_TOKENS):
        return PhiType.SERVICE_DATE, "date of an event tied to a person"
    return None


def _by_values(samples: Sequence[str | None]) -> tuple[PhiType, str] | None:
    values = [value for value in samples if value]
    if len(values) < 5:
        return None
    for pattern, phi_type in _VALUE_RULES:
        share = sum(1 for value in values if pattern.match(value.strip())) / len(values)
        if share >= MATCH_SHARE:
            return phi_type, f"{share:.0%} of {len(values)} sampled values look like {phi_type.label.lower()}"
    return None


def propose(column: ColumnInfo, samples: Sequence[str | None]) -> Proposal | None:
    """Values outrank names (a column called ``ref`` full of SSNs is an SSN column); names cover the rest."""
    found = _by_values(samples) if column.data_type in TEXT_TYPES else None
    found = found or _by_name(column)
    if found is None:
        return None
    return Proposal(column.schema, column.table, column.column, found[0], found[1])
