"""The common shape of every message: a type byte, a body codec, and framing.

Each message class carries its own body encoder and decoder side by side, so the format of a message is
written down once and a reviewer can check both directions against the documentation in one place.
"""

from __future__ import annotations

from typing import ClassVar, Self

from gateway.pgwire.errors import PROTOCOL_VIOLATION, ProtocolError
from gateway.pgwire.primitives import INT32, MAX_INT32


class Message:
    """Base of all messages. ``type_code`` is empty for startup-phase packets, which have no type byte."""

    __slots__ = ()
    type_code: ClassVar[bytes] = b""

    def encode_body(self) -> bytes:
        """The bytes after the length word."""
        raise NotImplementedError

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        """Inverse of ``encode_body``; raises ProtocolError on anything malformed."""
        raise NotImplementedError

    def encode(self) -> bytes:
        """The complete frame: type byte (if any), Int32 length counting itself, body."""
        body = self.encode_body()
        length = len(body) + 4
        if length > MAX_INT32:
            raise ValueError(f"{type(self).__name__} body of {len(body)} bytes is too large to frame")
        return self.type_code + INT32.pack(length) + body


class EmptyMessage(Message):
    """A message that is only a type byte and the length 4 (Sync, Flush, ParseComplete...)."""

    __slots__ = ()

    def encode_body(self) -> bytes:
        return b""

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if body:
            raise ProtocolError(PROTOCOL_VIOLATION, f"invalid {cls.__name__} message: unexpected {len(body)}-byte body")
        return cls()
