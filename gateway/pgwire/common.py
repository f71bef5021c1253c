"""Messages with the same type byte and format in both directions: COPY data and COPY completion.

One class each (rather than a frontend and a backend twin) so that a relay can pass COPY traffic through
without converting between look-alike types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from gateway.pgwire.base import EmptyMessage, Message


@dataclass(frozen=True, slots=True)
class CopyData(Message):
    """'d': a chunk of COPY data; row boundaries are not required to line up with messages."""

    type_code: ClassVar[bytes] = b"d"
    data: bytes

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        return cls(body)


@dataclass(frozen=True, slots=True)
class CopyDone(EmptyMessage):
    """'c': the sender has no more COPY data."""

    type_code: ClassVar[bytes] = b"c"
