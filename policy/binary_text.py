"""PostgreSQL's text form of a value that arrived in binary format, for the types masks care about.

A mask must see the same input whichever format the client asked for, or a pseudonym would differ between psql
(text) and asyncpg (binary). Types not handled here return None, and the caller redacts: fail closed.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

_EPOCH_DATE = date(2000, 1, 1)
_EPOCH_TS = datetime(2000, 1, 1)
_INT2, _INT4, _INT8 = struct.Struct("!h"), struct.Struct("!i"), struct.Struct("!q")

TEXT_LIKE = frozenset({25, 1042, 1043, 19, 705})  # text, bpchar, varchar, name, unknown: binary is the UTF-8 text


def _text(raw: bytes) -> str:
    return raw.decode("utf-8")


def _date(raw: bytes) -> str:
    (days,) = _INT4.unpack(raw)
    return (_EPOCH_DATE + timedelta(days=days)).isoformat()


def _timestamp(raw: bytes) -> str:
    (micros,) = _INT8.unpack(raw)
    return (_EPOCH_TS + timedelta(microseconds=micros)).isoformat(sep=" ")


def _timestamptz(raw: bytes) -> str:
    # Rendered in UTC: only the masks' view of the value (e.g. its year) depends on this, never the client's.
    (micros,) = _INT8.unpack(raw)
    return (_EPOCH_TS.replace(tzinfo=UTC) + timedelta(microseconds=micros)).isoformat(sep=" ")


def _bool(raw: bytes) -> str:
    return "t" if raw == b"\x01" else "f"


_DECODERS: dict[int, Callable[[bytes], str]] = {
    16: _bool,
    20: lambda raw: str(_INT8.unpack(raw)[0]),
    21: lambda raw: str(_INT2.unpack(raw)[0]),
    23: lambda raw: str(_INT4.unpack(raw)[0]),
    1082: _date,
    1114: _timestamp,
    1184: _timestamptz,
    2950: lambda raw: str(uuid.UUID(bytes=raw)),
}
for _oid in TEXT_LIKE:
    _DECODERS[_oid] = _text


def binary_to_text(type_oid: int, raw: bytes) -> str | None:
    decoder = _DECODERS.get(type_oid)
    if decoder is None:
        return None
    try:
        return decoder(raw)
    except (struct.error, UnicodeDecodeError, OverflowError, ValueError):
        return None
