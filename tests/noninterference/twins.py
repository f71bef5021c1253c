"""Twins of the clinic database: equal on everything an agent's masks reveal, different in every hidden character.

The base is ``demo.clinic.load_clinic``. A twin is built from the base's rows, read as PostgreSQL's own text
output in physical order, and written back with the same schema, the same COPY order and the same ANALYZE, so:

* every non-PHI column is identical, and so are ids, row order (ctid for ctid) and the NULL-ness of PHI values;
* every PHI value has **the same length in bytes** as in the base (a design choice: the heap layout, TOAST
  decisions, ``relpages`` and the planner's width statistics are then identical, so base and twins get the same
  plans and return rows in the same order; the price is that these twins cannot show a leak of a value's
  *length* alone, which ``length(notes)`` over a redacted column would be);
* what the agent's default masks reveal (``policy.defaults``) is equal, checked with the product's own
  ``policy.masking.mask_value`` after the build:
  - ``partial`` (SSN, phone): the last four letters or digits are kept, every character before them differs
    (in the ordered twin each hidden digit d becomes (d + 5) % 10, so it crosses every threshold; in the
    scrambled twin it is a random other digit);
  - ``generalize`` dates (birth, service): the year is kept; month, day (and hour, minute, second) each differ
    in both digits (days stay in 01-28 and the data is in UTC, so no value crosses into another year);
  - ``generalize`` ZIP: the first three digits are kept, the other digits differ (as for ``partial``);
  - ``hash`` (name, MRN): a bijection on values (equal stay equal, different stay different) that changes
    every character. The *ordered* twin uses ``c -> chr(ord(c) + 1)``, which is strictly increasing on
    characters and therefore keeps the order of values under the databases' C collation (checked); the
    *scrambled* twin draws each character at random (order not kept);
  - ``redact`` (address, email, notes): every character differs.
* free-text notes quote the patient's name, MRN, birth date, contact and visit date. In the *ordered* twin each
  quotation is replaced by the twin's own value at the same offset (the note still "mentions" its patient, as a
  real note would) and every other character differs; in the *scrambled* twin every character of the note is
  random. Either way no base name survives inside a note.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import psycopg

from demo.clinic import CLINIC_SCHEMA_SQL, PHI_TAGS

TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("diagnosis_codes", ("code", "description")),
    ("patients", ("id", "mrn", "full_name", "date_of_birth", "ssn", "phone", "email", "address", "zip")),
    ("encounters", ("id", "patient_id", "admitted_at", "diagnosis_code", "notes")),
    ("prescriptions", ("id", "encounter_id", "drug", "dose")),
)
PHI_TYPE_OF: dict[tuple[str, str], str] = {(tag.table, tag.column): tag.phi_type for tag in PHI_TAGS}

_TEXT_POOL = string.ascii_letters + string.digits + " .,-;:()/"
_PUNCT_POOL = "-./#:"
_TS = re.compile(r"^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\+00$")
_DATE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)$")


@dataclass(frozen=True)
class TwinSpec:
    name: str
    order_preserving: bool  # hashed columns renamed by an order-preserving bijection
    notes_keep_mentions: bool  # notes quote the twin's own name, MRN, dates and contact where the base's did
    seed: int


ORDERED = TwinSpec("ordered", order_preserving=True, notes_keep_mentions=True, seed=1)
SCRAMBLED = TwinSpec("scrambled", order_preserving=False, notes_keep_mentions=False, seed=2)


def _other(rng: random.Random, char: str, pool: str) -> str:
    while True:
        pick = rng.choice(pool)
        if pick != char:
            return pick


def _same_class_other(rng: random.Random, char: str) -> str:
    if char.isdigit():
        return _other(rng, char, string.digits)
    if char.isupper():
        return _other(rng, char, string.ascii_uppercase)
    if char.islower():
        return _other(rng, char, string.ascii_lowercase)
    return _other(rng, char, _PUNCT_POOL)


def _two_digit(rng: random.Random, old: str, low: int, high: int) -> str:
    """A two-digit number in [low, high] whose both digits differ from ``old``'s."""
    choices = [f"{n:02d}" for n in range(low, high + 1) if f"{n:02d}"[0] != old[0] and f"{n:02d}"[1] != old[1]]
    return rng.choice(choices)


def _hidden_char(rng: random.Random, char: str, complement: bool) -> str:
    """A different character of the same class; with ``complement`` a digit d becomes (d + 5) % 10, so every
    digit crosses every threshold a decoder might test (``ascii(ssn) >= 53`` flips for sure)."""
    if complement and char.isdigit():
        return str((int(char) + 5) % 10)
    return _same_class_other(rng, char)


def partial_twin(rng: random.Random, value: str, complement: bool = False) -> str:
    """Keep the last four letters or digits (what the "partial" mask shows); change every other character."""
    alnum = [i for i, c in enumerate(value) if c.isalnum()]
    kept = set(alnum[-4:])
    return "".join(c if i in kept else _hidden_char(rng, c, complement) for i, c in enumerate(value))


def zip_twin(rng: random.Random, value: str, complement: bool = False) -> str:
    """Keep the first three digits (what "generalize" shows for a ZIP code); change the rest."""
    digits = [i for i, c in enumerate(value) if c.isdigit()]
    kept = set(digits[:3])
    return "".join(c if i in kept else _hidden_char(rng, c, complement) for i, c in enumerate(value))


def date_twin(rng: random.Random, value: str) -> str:
    match = _DATE.match(value)
    assert match, f"unexpected date text {value!r}"
    year, month, day = match.groups()
    return f"{year}-{_two_digit(rng, month, 1, 12)}-{_two_digit(rng, day, 1, 28)}"


def timestamp_twin(rng: random.Random, value: str) -> str:
    match = _TS.match(value)
    assert match, f"unexpected timestamptz text {value!r} (the harness expects TimeZone UTC)"
    year, month, day, hour, minute, second = match.groups()
    return (
        f"{year}-{_two_digit(rng, month, 1, 12)}-{_two_digit(rng, day, 1, 28)} "
        f"{_two_digit(rng, hour, 0, 23)}:{_two_digit(rng, minute, 0, 59)}:{_two_digit(rng, second, 0, 59)}+00"
    )


def free_text_twin(rng: random.Random, value: str) -> str:
    return "".join(_other(rng, c, _TEXT_POOL) for c in value)


def shift_chars(value: str) -> str:
    """Strictly increasing on characters, no fixed point: keeps byte order (C collation) and changes every char."""
    assert all(" " <= c < "~" for c in value), f"not shiftable: {value!r}"
    return "".join(chr(ord(c) + 1) for c in value)


def _scramble(rng: random.Random, value: str) -> str:
    return "".join(_same_class_other(rng, c) for c in value)


class Renaming:
    """A bijection on the values of one hashed column: equal values stay equal, different ones stay different."""

    def __init__(self, rng: random.Random, order_preserving: bool) -> None:
        self.rng, self.order_preserving = rng, order_preserving
        self.forward: dict[str, str] = {}
        self.taken: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.forward:
            return self.forward[value]
        if self.order_preserving:
            new = shift_chars(value)
        else:
            new = _scramble(self.rng, value)
            while new in self.taken:
                new = _scramble(self.rng, value)
        assert new not in self.taken
        self.forward[value] = new
        self.taken.add(new)
        return new


@dataclass
class TwinData:
    """All four tables of one database, as text rows in physical order."""

    rows: dict[str, list[tuple[str | None, ...]]] = field(default_factory=dict)


def read_tables(conn: psycopg.Connection) -> TwinData:
    data = TwinData()
    for table, columns in TABLES:
        select = ", ".join(f"{c}::text" for c in columns)
        data.rows[table] = [tuple(r) for r in conn.execute(f"SELECT {select} FROM public.{table} ORDER BY ctid")]
    return data


def make_twin(base: TwinData, spec: TwinSpec) -> TwinData:
    rng = random.Random(spec.seed)
    names, mrns = Renaming(rng, spec.order_preserving), Renaming(rng, spec.order_preserving)
    twin = TwinData()
    twin.rows["diagnosis_codes"] = list(base.rows["diagnosis_codes"])
    twin.rows["prescriptions"] = list(base.rows["prescriptions"])

    def keep_none(fn: Callable[[random.Random, str], str]) -> Callable[[str | None], str | None]:
        return lambda v: None if v is None else fn(rng, v)

    complement = spec.order_preserving  # the ordered twin's hidden digits are complements, the other's random

    def partial(r: random.Random, v: str) -> str:
        return partial_twin(r, v, complement)

    def zip_code_twin(r: random.Random, v: str) -> str:
        return zip_twin(r, v, complement)

    patients: list[tuple[str | None, ...]] = []
    by_id: dict[str, tuple[tuple[str | None, ...], tuple[str | None, ...]]] = {}
    for row in base.rows["patients"]:
        pid, mrn, name, dob, ssn, phone, email, address, zip_code = row
        assert mrn is not None and name is not None
        new = (
            pid,
            mrns(mrn),
            names(name),
            keep_none(date_twin)(dob),
            keep_none(partial)(ssn),
            keep_none(partial)(phone),
            keep_none(free_text_twin)(email),
            keep_none(free_text_twin)(address),
            keep_none(zip_code_twin)(zip_code),
        )
        patients.append(new)
        assert pid is not None
        by_id[pid] = (row, new)
    twin.rows["patients"] = patients

    encounters: list[tuple[str | None, ...]] = []
    for row in base.rows["encounters"]:
        eid, patient_id, admitted, code, notes = row
        assert admitted is not None
        new_admitted = timestamp_twin(rng, admitted)
        new_notes = notes
        if notes is not None:
            if spec.notes_keep_mentions and patient_id in by_id:
                old_p, new_p = by_id[patient_id]
                mentions = [(old_p[i], new_p[i]) for i in (2, 1, 3, 5, 6)] + [(admitted[:10], new_admitted[:10])]
                new_notes = _rewrite_with_mentions(rng, notes, mentions)
            else:
                new_notes = free_text_twin(rng, notes)
        encounters.append((eid, patient_id, new_admitted, code, new_notes))
    twin.rows["encounters"] = encounters
    return twin


def _rewrite_with_mentions(rng: random.Random, text: str, mentions: Iterable[tuple[str | None, str | None]]) -> str:
    """Quotes of the base values become quotes of the twin values (same offsets); every other character differs."""
    out: list[str | None] = [None] * len(text)
    for old, new in mentions:
        if not old or new is None:
            continue
        assert len(old) == len(new)
        start = text.find(old)
        while start >= 0:
            for offset, char in enumerate(new):
                if out[start + offset] is None:
                    out[start + offset] = char
            start = text.find(old, start + 1)
    return "".join(c if c is not None else _other(rng, text[i], _TEXT_POOL) for i, c in enumerate(out))


def write_tables(conn: psycopg.Connection, data: TwinData) -> None:
    """Same schema, same COPY order and ANALYZE as demo.clinic.load_clinic, in one transaction."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(CLINIC_SCHEMA_SQL)
        for table, columns in TABLES:
            with cur.copy(f"COPY public.{table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in data.rows[table]:
                    copy.write_row(row)
        for table, _ in TABLES:
            cur.execute(f"ANALYZE public.{table}")


def freeze_statistics(conn: psycopg.Connection) -> None:
    """No autovacuum/autoanalyze on these tables: statistics stay exactly as the build left them everywhere."""
    with conn.transaction():
        for table, _ in TABLES:
            conn.execute(f"ALTER TABLE public.{table} SET (autovacuum_enabled = false)")


# --------------------------------------------------------------------------------------------------------------
# Checks: a twin is only useful if it really agrees with the base on what the masks reveal
# --------------------------------------------------------------------------------------------------------------


def check_twin(
    base: TwinData, twin: TwinData, spec: TwinSpec, agent_masks: dict[str, str], key: bytes
) -> dict[str, int]:
    """Assert the twin's contract; return how many hidden characters differ per PHI column (for the report)."""
    from policy.masking import mask_value

    differing: dict[str, int] = {}
    for table, columns in TABLES:
        base_rows, twin_rows = base.rows[table], twin.rows[table]
        assert len(base_rows) == len(twin_rows), table
        for column_index, column in enumerate(columns):
            phi_type = PHI_TYPE_OF.get((table, column))
            forward: dict[str, str] = {}
            backward: dict[str, str] = {}
            for b_row, t_row in zip(base_rows, twin_rows, strict=True):
                b, t = b_row[column_index], t_row[column_index]
                if phi_type is None:
                    assert b == t, (table, column, b, t)
                    continue
                assert (b is None) == (t is None), (table, column, b, t)
                if b is None or t is None:
                    continue
                assert len(b.encode()) == len(t.encode()), (table, column, b, t)
                mask = agent_masks[phi_type]
                if mask == "hash":
                    assert forward.setdefault(b, t) == t and backward.setdefault(t, b) == b, (table, column, b, t)
                    assert all(x != y for x, y in zip(b, t, strict=True)), (table, column, b, t)
                else:
                    assert mask_value(b, mask, phi_type, key) == mask_value(t, mask, phi_type, key), (column, b, t)
                if b != t:
                    differing[f"{table}.{column}"] = differing.get(f"{table}.{column}", 0) + 1
            if phi_type is not None and agent_masks[phi_type] == "hash" and spec.order_preserving:
                ordered = sorted(forward)
                assert [forward[v] for v in ordered] == sorted(forward.values()), f"{column}: order not kept"
    return differing


def mentions_of_base_names(base: TwinData, twin: TwinData) -> int:
    """How many twin notes still quote a base patient's name (must be zero)."""
    names = {row[2] for row in base.rows["patients"] if row[2]}
    return sum(1 for row in twin.rows["encounters"] if row[4] and any(n in row[4] for n in names))


def physical_layout(conn: psycopg.Connection) -> list[Sequence[object]]:
    """ctid of every row and the size of every table: must be equal in base and twins."""
    layout: list[Sequence[object]] = []
    for table, columns in TABLES:
        key = columns[0]
        layout.append(conn.execute(f"SELECT pg_relation_size('public.{table}')").fetchall())
        layout.append(conn.execute(f"SELECT {key}::text, ctid::text FROM public.{table} ORDER BY ctid").fetchall())
    return layout
