"""Result values as JSON: numbers, booleans, nulls, arrays and JSON documents instead of PostgreSQL's text.

Reads arrive as PostgreSQL's own text output (policy.target_catalog.text_only_adapters) and are masked as text
(policy.masking). The HTTP API, MCP and ticket results then give each value the JSON type of its column, by one
rule that depends only on the column (its declared type and its mask), never on a value:

* a masked column (any mask: redact, partial, hash, generalize, null) is always a JSON string, or null where the
  mask already shows NULL (policy.masking.mask_value: a NULL stays NULL; the null mask is always NULL). A mask of
  an integer column is a string such as ``"[redacted]"``: nothing is parsed out of a masked value;
* an unmasked value by its column's type: smallint, integer, bigint -> number; real, double precision -> number
  (``NaN``, ``Infinity``, ``-Infinity`` stay strings: JSON has no such numbers); boolean -> true/false;
  json, jsonb -> the parsed document (nested deeper than ``MAX_JSON_DEPTH`` it stays text); arrays -> JSON
  arrays (any number of dimensions) whose elements follow the same rule; numeric -> always a string, the exact
  decimal PostgreSQL printed (a JSON number would be read as a double by most clients and lose digits);
  everything else (dates, times, timestamps, intervals, uuid, bytea as ``\\x`` hex, enums, ranges, composites,
  money, text) -> the string PostgreSQL printed;
* SQL NULL -> null.

So a value's JSON type is a function of its column's type, its mask and whether it is NULL, with one exception
that reveals nothing: an unmasked float that is NaN or infinite (or an unmasked JSON document too deep, or any
unmasked text PostgreSQL printed in an unexpected form) is a string; such a value is shown in full anyway.

Each result carries ``column_types`` beside ``columns``: per column its PostgreSQL type name (``format_type``,
e.g. ``integer``, ``timestamp with time zone``, ``text[]``), type OID, JSON kind and mask, so clients can parse
strings (dates, numerics) without guessing.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policy.masking import MaskingPlan

# JSON as Python builds it: what json.dumps takes.
JsonValue = Any

MAX_JSON_DEPTH = 200  # a json/jsonb value nested deeper stays text (Python's json would hit its recursion limit)

# Type OIDs fixed by PostgreSQL (pg_type.dat): the same on every server.
INT2, INT4, INT8 = 21, 23, 20
FLOAT4, FLOAT8 = 700, 701
BOOL = 16
JSON, JSONB = 114, 3802
_INTEGERS = frozenset({INT2, INT4, INT8})
_FLOATS = frozenset({FLOAT4, FLOAT8})
_DOCUMENTS = frozenset({JSON, JSONB})
_NOT_A_NUMBER = frozenset({"NaN", "Infinity", "-Infinity"})
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JsonKind(enum.StrEnum):
    """The JSON type a column's non-NULL values have (``column_types[i].json``)."""

    NUMBER = "number"
    BOOLEAN = "boolean"
    STRING = "string"
    JSON = "json"  # any JSON value: the parsed json/jsonb document
    ARRAY = "array"


@dataclass(frozen=True)
class PgType:
    """What JSON typing needs of one pg_type row (loaded into policy.target_catalog.TargetCatalog.types)."""

    name: str  # format_type(oid, NULL): "integer", "text[]", "timestamp with time zone"
    element: int = 0  # for an array type: its element type (a domain's base type); 0 for anything else
    delimiter: str = ","  # the element type's typdelim (";" for box)


@dataclass(frozen=True)
class ValueType:
    """A column's type as far as JSON is concerned."""

    oid: int
    name: str
    element: ValueType | None = None  # arrays only
    delimiter: str = ","

    @property
    def kind(self) -> JsonKind:
        if self.element is not None:
            return JsonKind.ARRAY
        if self.oid in _INTEGERS or self.oid in _FLOATS:
            return JsonKind.NUMBER
        if self.oid == BOOL:
            return JsonKind.BOOLEAN
        if self.oid in _DOCUMENTS:
            return JsonKind.JSON
        return JsonKind.STRING

    def to_json(self, text: str | None) -> JsonValue:
        """The JSON value of one unmasked value given as PostgreSQL's text output."""
        if text is None:
            return None
        try:
            if self.element is not None:
                return _typed_elements(parse_array(text, self.delimiter), self.element)
            if self.oid in _INTEGERS:
                return int(text)
            if self.oid in _FLOATS:
                return text if text in _NOT_A_NUMBER else float(text)
            if self.oid == BOOL:
                return {"t": True, "f": False}.get(text, text)
            if self.oid in _DOCUMENTS:
                return _document(text)
        except (ValueError, RecursionError):
            return text
        return text


def value_type(oid: int, types: Mapping[int, PgType]) -> ValueType:
    """The ValueType of a result column's type OID; a type the catalog does not know is text named ``unknown``."""
    known = types.get(oid)
    if known is None:
        return ValueType(oid=oid, name="unknown")
    element = None
    if known.element:
        inner = types.get(known.element)
        element = ValueType(oid=known.element, name=inner.name if inner else "unknown")
    return ValueType(oid=oid, name=known.name, element=element, delimiter=known.delimiter)


@dataclass(frozen=True)
class ResultColumn:
    """One output column: its name, its type and the mask it was shown with (None: shown as it is)."""

    name: str
    type: ValueType
    mask: str | None

    @property
    def kind(self) -> JsonKind:
        return JsonKind.STRING if self.mask is not None else self.type.kind

    def to_json(self, value: str | None) -> JsonValue:
        """A masked value is passed on exactly as the mask made it (a string, or NULL); only unmasked values are
        typed."""
        return value if self.mask is not None else self.type.to_json(value)

    def describe(self) -> dict[str, Any]:
        """The column's entry in ``column_types`` (also what a ticket stores, read back by ``from_description``)."""
        entry: dict[str, Any] = {
            "name": self.name,
            "type": self.type.name,
            "oid": self.type.oid,
            "json": str(self.kind),
            "mask": self.mask,
        }
        element = self.type.element
        if element is not None and self.mask is None:  # a masked array is one string
            entry["element"] = {"type": element.name, "oid": element.oid, "json": str(element.kind)}
            entry["delimiter"] = self.type.delimiter
        return entry

    @classmethod
    def from_description(cls, entry: Mapping[str, Any]) -> ResultColumn:
        element_entry = entry.get("element")
        element = None
        if isinstance(element_entry, Mapping):
            element = ValueType(oid=int(element_entry["oid"]), name=str(element_entry["type"]))
        mask = entry.get("mask")
        return cls(
            name=str(entry["name"]),
            type=ValueType(
                oid=int(entry["oid"]),
                name=str(entry["type"]),
                element=element,
                delimiter=str(entry.get("delimiter", ",")),
            ),
            mask=None if mask is None else str(mask),
        )


def result_columns(
    names: Sequence[str], type_oids: Sequence[int], plan: MaskingPlan, types: Mapping[int, PgType]
) -> list[ResultColumn]:
    """The columns of a masked result: each one's type from the catalog, its mask from the masking plan."""
    return [
        ResultColumn(name=name, type=value_type(oid, types), mask=None if spec is None else spec.mask)
        for name, oid, spec in zip(names, type_oids, plan.columns, strict=True)
    ]


def typed_rows(rows: Sequence[Sequence[str | None]], columns: Sequence[ResultColumn]) -> list[list[JsonValue]]:
    """Masked text rows as JSON values (see the module docstring for the rule)."""
    if all(column.mask is not None or column.type.kind == JsonKind.STRING for column in columns):
        return [list(row) for row in rows]
    return [[column.to_json(value) for column, value in zip(columns, row, strict=True)] for row in rows]


def describe_columns(columns: Sequence[ResultColumn]) -> list[dict[str, Any]]:
    return [column.describe() for column in columns]


# --------------------------------------------------------------------------------------------------- parsing


def _document(text: str) -> JsonValue:
    value = json.loads(text)
    if not _within_depth(value, MAX_JSON_DEPTH):
        raise ValueError("json nested too deeply")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        # A json value may hold an unpaired surrogate escape ("\ud800"), which parses to a string no UTF-8 encoder
        # takes: the answer could not be sent. Such a document stays its text (UnicodeEncodeError is a ValueError).
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    return value


def _within_depth(value: JsonValue, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children = list(current.values())
        elif isinstance(current, list):
            children = current
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def _typed_elements(items: list[Any], element: ValueType) -> list[JsonValue]:
    return [_typed_elements(item, element) if isinstance(item, list) else element.to_json(item) for item in items]


def parse_array(text: str, delimiter: str = ",") -> list[Any]:
    """PostgreSQL's text form of an array (array_out) as nested lists of element texts (None for NULL).

    Handles quoted elements with backslash escapes, unquoted ``NULL``, nested dimensions and the ``[l:u]=``
    bounds decoration of arrays that do not start at 1. Raises ValueError on anything else.
    """
    start = 0
    if text.startswith("["):  # "[0:2]={1,2,3}": lower bounds other than 1
        start = text.find("=") + 1
        if start == 0:
            raise ValueError("array bounds without '='")
    try:
        items, end = _parse_dimension(text, start, delimiter)
    except IndexError:
        raise ValueError("unterminated array") from None
    if end != len(text):
        raise ValueError("text after the array")
    return items


def _parse_dimension(text: str, pos: int, delimiter: str) -> tuple[list[Any], int]:
    if text[pos] != "{":
        raise ValueError("array does not start with '{'")
    pos += 1
    items: list[Any] = []
    if text[pos] == "}":
        return items, pos + 1
    while True:
        char = text[pos]
        item: Any
        if char == "{":
            item, pos = _parse_dimension(text, pos, delimiter)
        elif char == '"':
            pos += 1
            chunks = []
            while text[pos] != '"':
                if text[pos] == "\\":
                    pos += 1
                chunks.append(text[pos])
                pos += 1
            pos += 1
            item = "".join(chunks)
        else:
            end = pos
            while text[end] != delimiter and text[end] != "}":
                end += 1
            raw = text[pos:end]
            item = None if raw == "NULL" else raw
            pos = end
        items.append(item)
        if text[pos] == delimiter:
            pos += 1
        elif text[pos] == "}":
            return items, pos + 1
        else:
            raise ValueError("unexpected character in array")
