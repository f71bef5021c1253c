"""One-shot encoding and decoding of complete frames.

``encode`` works for every message of both directions. The decoders take exactly one frame and reuse the
incremental parsers, so one-shot and streaming decoding cannot disagree.
"""

from __future__ import annotations

from gateway.pgwire.backend import BackendMessage
from gateway.pgwire.base import Message
from gateway.pgwire.errors import PROTOCOL_VIOLATION, ProtocolError
from gateway.pgwire.frontend import FrontendMessage
from gateway.pgwire.parser import BackendParser, FrontendParser


def encode(message: Message) -> bytes:
    """The complete frame of ``message`` (startup packets without type byte, others with)."""
    return message.encode()


def _not_one_frame(leftover: int) -> ProtocolError:
    if leftover:
        return ProtocolError(PROTOCOL_VIOLATION, f"{leftover} bytes after the end of the message")
    return ProtocolError(PROTOCOL_VIOLATION, "incomplete message")


def decode_frontend(frame: bytes, *, startup: bool = False) -> FrontendMessage:
    """Decode one frontend frame; ``startup=True`` for startup-phase packets (no type byte)."""
    parser = FrontendParser(max(len(frame), 5), expect_startup=startup)
    parser.feed(frame)
    message = parser.next_message()
    if message is None or parser.buffered:
        raise _not_one_frame(parser.buffered if message is not None else 0)
    return message


def decode_backend(frame: bytes) -> BackendMessage:
    """Decode one backend frame."""
    parser = BackendParser(max(len(frame), 5))
    parser.feed(frame)
    message = parser.next_message()
    if message is None or parser.buffered:
        raise _not_one_frame(parser.buffered if message is not None else 0)
    return message
