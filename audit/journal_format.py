"""The on-disk form of the gateway's audit journal: pure functions, no I/O, so they are tested byte by byte.

A journal segment is a pre-zeroed file of records, each ``Int32 length, Int32 CRC-32, payload``, followed by
zeros. The payload is one audit event as a line of PostgreSQL's ``COPY ... FROM STDIN`` text format, in the
column order of ``audit.events.COLUMNS``: shipping a batch to the audit table is then a plain
concatenation, with no per-row work at shipping time.

Reading stops at the first zero length or checksum mismatch: a crash during a write leaves a torn tail, and
everything before it was either acknowledged (its fsync returned) or never was. Nothing after a bad record
is trusted, which is why a recovered journal never appends to an old segment.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

HEADER: Final = struct.Struct("<II")
HEADER_SIZE: Final = HEADER.size
MAX_RECORD: Final = 1 << 30
_ESCAPES: Final = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_field(value: Any) -> str:
    """One value in COPY text form: ``\\N`` for NULL, special characters backslash-escaped."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        text = value
    elif isinstance(value, datetime):
        return value.isoformat()
    elif isinstance(value, Mapping | list):
        text = json.dumps(value, separators=(",", ":"), default=str)
    else:
        return str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_ESCAPES)
    return text


def copy_line(row: Mapping[str, Any], columns: Sequence[str]) -> bytes:
    """An event's column values as one COPY text line (with its newline)."""
    return ("\t".join(copy_field(row[name]) for name in columns) + "\n").encode("utf-8")


_ESCAPED: Final = re.compile(rb"\\(.)")
_UNESCAPES: Final = {b"\\": b"\\", b"t": b"\t", b"n": b"\n", b"r": b"\r"}


def copy_fields(line: bytes) -> list[bytes | None]:
    """The values of a line made by ``copy_line``, in PostgreSQL's text input form (None for NULL): what a
    parameterized INSERT takes, for writers that send a small batch in one round trip instead of a COPY."""
    fields: list[bytes | None] = []
    for raw in line.rstrip(b"\n").split(b"\t"):
        if raw == b"\\N":
            fields.append(None)
        elif b"\\" in raw:
            fields.append(_ESCAPED.sub(lambda match: _UNESCAPES[match.group(1)], raw))
        else:
            fields.append(raw)
    return fields


def frame(payload: bytes) -> bytes:
    """A record as written to a segment."""
    if not payload or len(payload) > MAX_RECORD:
        raise ValueError(f"a journal record holds 1 to {MAX_RECORD} bytes, not {len(payload)}")
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class Record:
    payload: bytes
    end: int  # offset just past this record in its segment: where a reader resumes


def scan(data: bytes | memoryview, start: int = 0) -> Iterator[Record]:
    """The valid records of a segment from ``start``, stopping at zeros, a torn header or a bad checksum."""
    view = memoryview(data)
    position = start
    while position + HEADER_SIZE <= len(view):
        length, checksum = HEADER.unpack_from(view, position)
        end = position + HEADER_SIZE + length
        if length == 0 or length > MAX_RECORD or end > len(view):
            return
        payload = bytes(view[position + HEADER_SIZE : end])
        if zlib.crc32(payload) != checksum:
            return
        yield Record(payload, end)
        position = end


def segment_name(number: int) -> str:
    return f"{number:016x}.seg"


def segment_number(name: str) -> int | None:
    """The number of a segment file name, or None for any other file."""
    stem, dot, suffix = name.partition(".")
    if suffix != "seg" or not dot or len(stem) != 16:
        return None
    try:
        return int(stem, 16)
    except ValueError:
        return None
