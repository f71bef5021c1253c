"""Which patients' records a result carried: the accounting of disclosures (45 CFR 164.528), pseudonymised.

A data source's policy names its patient-key columns (policy.models.PatientKeyColumn: ``patients.id``,
``patients.mrn``, ``encounters.patient_id``). For each statement whose result returns such a column *unmodified*
(by lineage, or by the origin PostgreSQL reports when lineage is not established), every front collects that
column's raw values from the rows the client receives, before masking, and the statement's outcome record
carries them as keyed pseudonyms (``PatientAccess``), so that "who read patient X?" is a look-up of X's pseudonym
(audit.accounting).

Why pseudonyms, and why a key of their own (``PATIENT_PSEUDONYM_KEY``): the audit trail must hold no PHI in clear
(invariant 7), and a patient's id or record number is an identifier. With the masking key, a pseudonym in the
audit would equal the masked value an agent sees for the same column and type, which would tie the two; with a
key of its own, nobody without it can tell which patient a record names, and the web computes one patient's
pseudonym only for a compliance officer's audited look-up.

What is recorded never guesses: a column that is a computed value of a key (``id + 1``, ``max(id)``, a CASE) is
not a key; a result read from a patient table without an unmodified key column says so (``identified`` false,
with the tables read), rather than naming no patient or the wrong ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from policy.classifier import Classification
from policy.lineage_types import Derivation, Lineage, OutputColumn
from policy.target_catalog import TargetCatalog

# Distinct key values kept per statement: bounds the record (and the gateway's memory) for a bulk read; the
# record then says it was truncated.
MAX_KEYS_PER_STATEMENT = 10_000
_PSEUDONYM_BYTES = 16  # 128 bits: collisions are not a concern at any realistic number of patients


def require_patient_key() -> bytes:
    """The accounting's own pseudonym key (from the environment): at least 32 characters, never the masking key."""
    key = settings.PATIENT_PSEUDONYM_KEY
    if not key or len(key) < 32:
        raise ImproperlyConfigured(
            "PATIENT_PSEUDONYM_KEY (or PATIENT_PSEUDONYM_KEY_FILE) must be set to at least 32 characters"
        )
    if key == settings.PSEUDONYM_KEY:
        raise ImproperlyConfigured("PATIENT_PSEUDONYM_KEY must differ from PSEUDONYM_KEY (the masking key)")
    return key.encode("utf-8")


def pseudonym(key: bytes, datasource: str, key_name: str, value: bytes) -> str:
    """A patient key as the audit holds it: ``<key name>:<hex>``, keyed per data source and kind of key.

    ``value`` is PostgreSQL's text form of the key, as UTF-8 (the wire's text format, the HTTP front's strings;
    a binary value is turned into its text form first), so one patient has one pseudonym on every front."""
    return keyed_pseudonyms(key, datasource, key_name)(value)


def keyed_pseudonyms(key: bytes, datasource: str, key_name: str) -> Callable[[bytes], str]:
    """``pseudonym`` for one data source and kind of key, for many values: keyed BLAKE2b (a keyed hash made to be
    a MAC and a pseudorandom function), its key and the constant prefix absorbed once; then one copy and one
    update a value, about half an HMAC-SHA256's cost (a bulk read names up to MAX_KEYS_PER_STATEMENT patients,
    on the wire gateway's event loop)."""
    state = hashlib.blake2b(key=key if len(key) <= 64 else hashlib.sha512(key).digest(), digest_size=_PSEUDONYM_BYTES)
    state.update(b"\x00".join((datasource.encode(), key_name.encode(), b"")))
    prefix = f"{key_name}:"

    def named(value: bytes) -> str:
        one = state.copy()
        one.update(value)
        return prefix + one.hexdigest()

    return named


def looked_up_pseudonym(key: bytes, datasource: str, key_name: str, typed: str) -> str:
    """The pseudonym of a key a compliance officer typed (surrounding blanks ignored)."""
    return pseudonym(key, datasource, key_name, typed.strip().encode("utf-8"))


def _output_key(output: OutputColumn, catalog: TargetCatalog) -> str | None:
    """The key name of an output that is exactly a stored patient key, or None."""
    if output.unknown or output.foreign or output.derivation != Derivation.DIRECT or not output.sources:
        return None
    names = {catalog.patient_keys.get((source.schema, source.table, source.column)) for source in output.sources}
    if len(names) != 1 or None in names:
        return None  # not a key, or keys of different kinds in one column (UNION arms): not one patient space
    return names.pop()


def key_columns(
    origins: Sequence[tuple[int, int]], lineage: Lineage | None, catalog: TargetCatalog
) -> tuple[tuple[int, str], ...]:
    """(output index, key name) of the result's columns that are unmodified patient keys.

    By lineage when it lines up with the result (as the masking plan does: policy.lineage_masking); otherwise by
    the origin PostgreSQL reports, which it gives only for a plain column reference of a table."""
    if not catalog.patient_keys:
        return ()
    if lineage is not None and len(lineage.outputs) == len(origins) and all(o.name != "*" for o in lineage.outputs):
        keys = ((index, _output_key(output, catalog)) for index, output in enumerate(lineage.outputs))
    else:
        keys = ((index, catalog.patient_key_origins.get(origin)) for index, origin in enumerate(origins))
    return tuple((index, name) for index, name in keys if name is not None)


def tables_read(
    classification: Classification | None, lineage: Lineage | None, catalog: TargetCatalog
) -> tuple[str, ...]:
    """The patient tables (those with a key column) whose values can reach the result's columns, as schema.table.

    With complete output lineage, the tables of the outputs' sources: a count of rows reads no patient's record.
    Otherwise every patient table the statement names (fail towards saying more)."""
    patient_tables = catalog.patient_tables
    if not patient_tables:
        return ()
    tables: set[tuple[str, str]] = set()
    if lineage is not None and not any(output.unknown or output.name == "*" for output in lineage.outputs):
        tables = {(source.schema, source.table) for output in lineage.outputs for source in output.sources}
    else:
        tables = set(lineage.relations) if lineage is not None else set()
        for written in classification.relations if classification is not None else ():
            schema, _, name = written.rpartition(".")
            resolved = catalog.resolve(schema.rpartition(".")[2] or None, name)
            if resolved is not None:
                tables.add(resolved)
    return tuple(sorted(f"{schema}.{table}" for schema, table in tables & patient_tables))


@dataclass
class KeysSeen:
    """Distinct raw key values of one statement's result, per key name, up to ``limit`` in all."""

    limit: int = MAX_KEYS_PER_STATEMENT
    values: dict[str, set[bytes]] = field(default_factory=dict)
    count: int = 0
    truncated: bool = False  # a key was left out: more than ``limit``, or a value the gateway could not read

    def add(self, key_name: str, value: bytes) -> None:
        seen = self.values.setdefault(key_name, set())
        if value in seen:
            return
        if self.count >= self.limit:
            self.truncated = True
            return
        seen.add(value)
        self.count += 1


@dataclass(frozen=True)
class PatientAccess:
    """What one statement's result disclosed about patients, as its outcome record holds it (no raw key).

    ``identified``: the result had a patient-key column, and ``pseudonyms`` are its distinct values (at most
    MAX_KEYS_PER_STATEMENT; ``truncated`` when more were sent). Otherwise the rows came from ``tables`` without
    saying whose they were."""

    tables: tuple[str, ...]
    key_columns: Mapping[str, str] = field(default_factory=dict)  # output column name -> key name
    pseudonyms: tuple[str, ...] = ()
    truncated: bool = False

    @property
    def identified(self) -> bool:
        return bool(self.key_columns)

    def details(self) -> dict[str, object]:
        """The ``patients`` member of a ``query.executed`` record's details (audit.events.executed)."""
        if not self.identified:
            return {"identified": False, "tables": list(self.tables)}
        return {
            "identified": True,
            "tables": list(self.tables),
            "key_columns": dict(self.key_columns),
            "count": len(self.pseudonyms),
            "truncated": self.truncated,
            "pseudonyms": list(self.pseudonyms),
        }


def named_key_columns(keys: Iterable[tuple[int, str]], column_names: Sequence[str]) -> dict[str, str]:
    """Output column name -> key name, for the record (a column without a name is named by its position)."""
    return {column_names[index] if index < len(column_names) else str(index): name for index, name in keys}


def patient_access(
    *,
    datasource: str,
    tables: Sequence[str],
    key_columns: Mapping[str, str],
    seen: KeysSeen | None,
    rowcount: int,
    key: bytes,
) -> PatientAccess | None:
    """The accounting of one result, or None when it disclosed nothing about patients (no row, or neither a key
    column nor a patient table)."""
    if rowcount <= 0 or not (key_columns or tables):
        return None
    if not key_columns:
        return PatientAccess(tables=tuple(tables))
    pseudonyms: set[str] = set()
    for key_name, values in (seen.values if seen is not None else {}).items():
        pseudonyms.update(map(keyed_pseudonyms(key, datasource, key_name), values))
    return PatientAccess(
        tables=tuple(tables),
        key_columns=dict(key_columns),
        pseudonyms=tuple(sorted(pseudonyms)),
        truncated=seen is not None and seen.truncated,
    )


def collect_text_rows(keys: Iterable[tuple[int, str]], rows: Iterable[Sequence[str | None]]) -> KeysSeen:
    """The keys in rows of text values (the HTTP and MCP fronts' raw rows, before masking)."""
    seen = KeysSeen()
    wanted = tuple(keys)
    for row in rows:
        for index, key_name in wanted:
            value = row[index]
            if value is not None:
                seen.add(key_name, value.encode("utf-8"))
    return seen


def rows_disclosed(
    *,
    datasource: str,
    classification: Classification | None,
    lineage: Lineage | None,
    catalog: TargetCatalog,
    patient_keys: Sequence[tuple[int, str]],
    columns: Sequence[str],
    rows: Sequence[Sequence[str | None]],
) -> PatientAccess | None:
    """The accounting of a result held as text rows (the HTTP and MCP fronts' reads, an approved statement's
    stored result), from the raw values of its key columns (``patient_keys``: the masking plan's)."""
    if not rows or not catalog.patient_keys:
        return None
    return patient_access(
        datasource=datasource,
        tables=tables_read(classification, lineage, catalog),
        key_columns=named_key_columns(patient_keys, columns),
        seen=collect_text_rows(patient_keys, rows) if patient_keys else None,
        rowcount=len(rows),
        key=require_patient_key(),
    )
