"""Incremental, sans-IO parsers: feed bytes as they arrive, pull complete messages out.

Lengths come from the peer, so they are checked as soon as the header is visible and before any of the
body is buffered. The receive buffer is a bytearray with a read offset: a message is consumed by moving
the offset, and the consumed prefix is dropped only once it is at least half the buffer, so each byte is
moved at most a constant number of times and a long DataRow stream parses in linear time.

Any ProtocolError puts a parser in a failed state: the buffer is released and every later call raises
again, because once framing is lost nothing after it can be trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Final, Literal, TypeVar, cast

from gateway.pgwire.backend import BACKEND_DECODERS, BackendMessage
from gateway.pgwire.errors import PROGRAM_LIMIT_EXCEEDED, PROTOCOL_VIOLATION, ProtocolError
from gateway.pgwire.frontend import (
    FRONTEND_DECODERS,
    FRONTEND_LENGTH_LIMITS,
    FrontendMessage,
    StartupMessage,
    decode_startup_body,
)
from gateway.pgwire.primitives import INT32

DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
MAX_STARTUP_PACKET_SIZE: Final = 10_000
_COMPACT_AFTER: Final = 64 * 1024

EncryptionResponse = Literal["S", "N", "G", "E"]

M = TypeVar("M")
_unpack_int32 = INT32.unpack_from


class _Parser:
    """Buffering, failure state and typed-message framing shared by both directions."""

    __slots__ = ("_buf", "_error", "_pos", "max_message_size")

    def __init__(self, max_message_size: int) -> None:
        if max_message_size < 5:
            raise ValueError("max_message_size must allow at least an empty message")
        self.max_message_size = max_message_size
        """Cap on a message's length word (which counts itself but not the type byte)."""
        self._buf = bytearray()
        self._pos = 0
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages; the server can use it for backpressure."""
        return len(self._buf) - self._pos

    @property
    def failed(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes) -> None:
        """Append received bytes. Raises if the parser already failed (the connection is dead)."""
        self._raise_if_failed()
        if not data:
            return
        buf = self._buf
        pos = self._pos
        if pos:
            if pos == len(buf):
                buf.clear()
                self._pos = 0
            elif pos >= _COMPACT_AFTER and pos * 2 >= len(buf):
                del buf[:pos]
                self._pos = 0
        buf += data

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise ProtocolError(self._error.sqlstate, self._error.message)

    def _fail(self, error: ProtocolError) -> ProtocolError:
        """Enter the failed state; returns the error so call sites read ``raise self._fail(...)``."""
        self._error = error
        self._buf = bytearray()
        self._pos = 0
        return error

    def _take(self, start: int, end: int) -> bytes:
        self._pos = end
        return bytes(self._buf[start:end])

    def _frame(self, known: Mapping[int, object], limits: Mapping[int, int], direction: str) -> tuple[int, int] | None:
        """Validate the next 'type byte + Int32 length + body' header; (type code, end offset) once complete."""
        self._raise_if_failed()
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available == 0:
            return None
        type_code = buf[pos]
        if type_code not in known:
            # Checked on the first byte: garbage is refused without waiting for a length.
            raise self._fail(
                ProtocolError(PROTOCOL_VIOLATION, f"invalid {direction} message type {bytes((type_code,))!r}")
            )
        if available < 5:
            return None
        (length,) = _unpack_int32(buf, pos + 1)
        if length < 4:
            raise self._fail(ProtocolError(PROTOCOL_VIOLATION, f"invalid message length {length}"))
        limit = min(limits.get(type_code, self.max_message_size), self.max_message_size)
        if length > limit:
            raise self._fail(
                ProtocolError(
                    PROGRAM_LIMIT_EXCEEDED,
                    f"{direction} message {bytes((type_code,))!r} of {length} bytes exceeds the limit of {limit}",
                )
            )
        end = pos + 1 + length
        if end > len(buf):
            return None
        return type_code, end

    def _next_typed(
        self,
        decoders: Mapping[int, Callable[[bytes], M]],
        limits: Mapping[int, int],
        direction: str,
    ) -> M | None:
        """Frame one message and decode it, or None if incomplete."""
        framed = self._frame(decoders, limits, direction)
        if framed is None:
            return None
        type_code, end = framed
        body = self._take(self._pos + 5, end)
        try:
            return decoders[type_code](body)
        except ProtocolError as error:
            raise self._fail(error) from None


class FrontendParser(_Parser):
    """Parses what a client sends to the gateway.

    Starts in the startup phase (packets are 'Int32 length + body', no type byte) unless
    ``expect_startup=False``. It stays there across SSLRequest/GSSENCRequest, because the client sends
    another startup packet after the one-byte answer, and switches to typed messages after returning a
    StartupMessage (nothing else may follow one) or when ``startup_done()`` is called.
    """

    __slots__ = ("_startup",)

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, *, expect_startup: bool = True) -> None:
        super().__init__(max_message_size)
        self._startup = expect_startup

    @property
    def in_startup_phase(self) -> bool:
        return self._startup

    def startup_done(self) -> None:
        """Switch to typed messages (idempotent; already done automatically after a StartupMessage)."""
        self._startup = False

    def begin_encryption(self) -> None:
        """Call after answering 'S'/'G' to an encryption request, before the TLS/GSS handshake.

        Bytes already buffered were sent in clear text before encryption started; treating them as part
        of the encrypted session would let a man in the middle inject commands (CVE-2021-23214).
        """
        self._raise_if_failed()
        if self.buffered:
            raise self._fail(ProtocolError(PROTOCOL_VIOLATION, "received unencrypted data after encryption request"))

    def next_message(self) -> FrontendMessage | None:
        """The next complete message, or None until more bytes are fed."""
        if not self._startup:
            return self._next_typed(FRONTEND_DECODERS, FRONTEND_LENGTH_LIMITS, "frontend")
        self._raise_if_failed()
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 4:
            return None
        (length,) = _unpack_int32(buf, pos)
        if length < 8:
            raise self._fail(ProtocolError(PROTOCOL_VIOLATION, f"invalid length of startup packet: {length}"))
        if length > MAX_STARTUP_PACKET_SIZE:
            raise self._fail(
                ProtocolError(
                    PROGRAM_LIMIT_EXCEEDED,
                    f"startup packet of {length} bytes exceeds the limit of {MAX_STARTUP_PACKET_SIZE}",
                )
            )
        if len(buf) - pos < length:
            return None
        body = self._take(pos + 4, pos + length)
        try:
            packet = decode_startup_body(body)
        except ProtocolError as error:
            raise self._fail(error) from None
        if isinstance(packet, StartupMessage):
            self._startup = False
        return packet

    def messages(self) -> Iterator[FrontendMessage]:
        """Every complete message currently buffered."""
        while (message := self.next_message()) is not None:
            yield message


class BackendParser(_Parser):
    """Parses what a PostgreSQL server sends to the gateway (the gateway acting as a client upstream)."""

    __slots__ = ()

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__(max_message_size)

    def next_encryption_response(self) -> EncryptionResponse | None:
        """Read the one unframed byte that answers SSLRequest ('S'/'N') or GSSENCRequest ('G'/'N').

        Returns 'E' without consuming anything when the server sent an ErrorResponse instead (then call
        next_message). Data buffered after 'S'/'G' arrived unencrypted and is refused (CVE-2021-23222).
        """
        self._raise_if_failed()
        if not self.buffered:
            return None
        answer = chr(self._buf[self._pos])
        if answer == "E":
            return "E"
        if answer not in ("S", "N", "G"):
            raise self._fail(ProtocolError(PROTOCOL_VIOLATION, f"invalid encryption response {answer!r}"))
        self._pos += 1
        if answer != "N" and self.buffered:
            raise self._fail(ProtocolError(PROTOCOL_VIOLATION, "received unencrypted data after encryption response"))
        return cast(EncryptionResponse, answer)

    def next_message(self) -> BackendMessage | None:
        """The next complete message, or None until more bytes are fed."""
        return self._next_typed(BACKEND_DECODERS, {}, "backend")

    def next_frame(self) -> tuple[int, bytes] | None:
        """The next complete message undecoded, as (type code, the whole frame with its header), or None.

        For relaying: most of a result (DataRow after DataRow) goes to the client byte for byte, so decoding
        it into objects and encoding it again is wasted work. ``decode_frame`` decodes one when needed.
        """
        framed = self._frame(BACKEND_DECODERS, {}, "backend")
        if framed is None:
            return None
        type_code, end = framed
        return type_code, self._take(self._pos, end)

    def messages(self) -> Iterator[BackendMessage]:
        """Every complete message currently buffered."""
        while (message := self.next_message()) is not None:
            yield message

    def take_run(self, type_code: int, max_bytes: int) -> tuple[bytes, list[int]]:
        """The complete messages of type ``type_code`` at the front of the buffer, undecoded and in one piece,
        with the end offset of each within it: lets a relay take a run of DataRows in one go (issue 13) without
        a call and a copy per frame. Stops at a message of another type or an incomplete one (left for
        ``next_frame``), and once the run holds ``max_bytes`` or more. A length word that is out of bounds ends
        the run too: ``next_frame`` then refuses it, after the frames before it, as frame by frame."""
        buf = self._buf
        start = pos = self._pos
        size = len(buf)
        limit = self.max_message_size
        ends: list[int] = []
        while pos < size and buf[pos] == type_code and pos - start < max_bytes:
            if size - pos < 5:
                break
            (length,) = _unpack_int32(buf, pos + 1)
            end = pos + 1 + length
            if length < 4 or length > limit or end > size:
                break
            ends.append(end - start)
            pos = end
        if not ends:
            self._raise_if_failed()  # a failed parser's buffer is empty: say so rather than "nothing yet"
            return b"", ends
        return self._take(start, pos), ends
