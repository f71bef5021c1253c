"""Field-level reading and writing: Int8/16/32, NUL-terminated strings, length-prefixed byte strings.

Reading goes through ``Reader`` so that every way a body can be malformed (truncated integer, missing
string terminator, negative length, invalid UTF-8, trailing bytes) surfaces as a ``ProtocolError`` and
never as IndexError/struct.error/UnicodeDecodeError. Writing raises ``ValueError`` instead: an unencodable
field is a bug in our own code (for instance a NUL inside a string, which would let a value smuggle a
message boundary into the stream), not a peer misbehaving.
"""

from __future__ import annotations

import struct
from typing import Final

from gateway.pgwire.errors import CHARACTER_NOT_IN_REPERTOIRE, PROTOCOL_VIOLATION, ProtocolError

INT16: Final = struct.Struct("!h")
UINT16: Final = struct.Struct("!H")
INT32: Final = struct.Struct("!i")
UINT32: Final = struct.Struct("!I")
MAX_INT32: Final = 2**31 - 1
NULL_LENGTH: Final = b"\xff\xff\xff\xff"


class Reader:
    """A cursor over one message body; ``name`` only feeds error messages."""

    __slots__ = ("_data", "_name", "_pos")

    def __init__(self, data: bytes, name: str) -> None:
        self._data = data
        self._name = name
        self._pos = 0

    def error(self, detail: str, sqlstate: str = PROTOCOL_VIOLATION) -> ProtocolError:
        """Build (not raise) an error naming the message, so callers can ``raise reader.error(...)``."""
        return ProtocolError(sqlstate, f"invalid {self._name} message: {detail}")

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _advance(self, size: int) -> int:
        start = self._pos
        if start + size > len(self._data):
            raise self.error("message body is truncated")
        self._pos = start + size
        return start

    def uint8(self) -> int:
        return self._data[self._advance(1)]

    def int16(self) -> int:
        return int(INT16.unpack_from(self._data, self._advance(2))[0])

    def uint16(self) -> int:
        return int(UINT16.unpack_from(self._data, self._advance(2))[0])

    def int32(self) -> int:
        return int(INT32.unpack_from(self._data, self._advance(4))[0])

    def uint32(self) -> int:
        return int(UINT32.unpack_from(self._data, self._advance(4))[0])

    def take(self, size: int) -> bytes:
        start = self._advance(size)
        return self._data[start : start + size]

    def rest(self) -> bytes:
        return self.take(self.remaining())

    def nullable_bytes(self) -> bytes | None:
        """Int32 length then that many bytes; length -1 means SQL NULL, any other negative is malformed."""
        size = self.int32()
        if size == -1:
            return None
        if size < 0:
            raise self.error(f"negative value length {size}")
        return self.take(size)

    def cstring_bytes(self) -> bytes:
        end = self._data.find(b"\x00", self._pos)
        if end < 0:
            raise self.error("string is missing its NUL terminator")
        value = self._data[self._pos : end]
        self._pos = end + 1
        return value

    def cstring(self) -> str:
        """A NUL-terminated string that must be valid UTF-8 (SQL text, names, parameters)."""
        raw = self.cstring_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(f"invalid UTF-8 at byte {exc.start} of a string", CHARACTER_NOT_IN_REPERTOIRE) from None

    def lenient_cstring(self) -> str:
        """A NUL-terminated string decoded with replacement, for diagnostics we relay but never interpret."""
        return self.cstring_bytes().decode("utf-8", errors="replace")

    def finish(self) -> None:
        """Reject bytes left over after the last field: a body must be consumed exactly."""
        if self._pos != len(self._data):
            raise self.error(f"{len(self._data) - self._pos} unexpected trailing bytes")


def _pack(packer: struct.Struct, value: int, what: str) -> bytes:
    try:
        return packer.pack(value)
    except struct.error:
        raise ValueError(f"{what} {value!r} does not fit the wire format ({packer.format})") from None


def int16(value: int, what: str = "Int16") -> bytes:
    return _pack(INT16, value, what)


def uint16(value: int, what: str = "count") -> bytes:
    return _pack(UINT16, value, what)


def int32(value: int, what: str = "Int32") -> bytes:
    return _pack(INT32, value, what)


def uint32(value: int, what: str = "OID") -> bytes:
    return _pack(UINT32, value, what)


def uint8(value: int, what: str = "Int8") -> bytes:
    if not 0 <= value <= 255:
        raise ValueError(f"{what} {value!r} does not fit in one byte")
    return bytes((value,))


def cstring(value: str) -> bytes:
    """UTF-8 plus terminator; a NUL inside would end the field early and desynchronise the reader."""
    if "\x00" in value:
        raise ValueError(f"string field contains a NUL character: {value[:40]!r}")
    return value.encode("utf-8") + b"\x00"


def nullable_bytes(value: bytes | None) -> bytes:
    if value is None:
        return NULL_LENGTH
    return int32(len(value), "value length") + value
