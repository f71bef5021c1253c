"""Fuzzing the parsers of gateway.pgwire: whatever bytes arrive, every call returns a message, returns
None, or raises ProtocolError; nothing else escapes and nothing loops.

Pure random bytes mostly die at the length check, so there are also structured inputs (a valid header
around a random body) and mutations of valid streams, which reach the body decoders.
"""

from __future__ import annotations

import contextlib
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import pgwire as pg
from gateway.pgwire.backend import BACKEND_DECODERS
from gateway.pgwire.base import Message
from gateway.pgwire.frontend import FRONTEND_DECODERS
from tests.test_pgwire_messages import backend_messages, regular_frontend_messages, startup_packets

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
Parser = pg.FrontendParser | pg.BackendParser

chunkings = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8)


def drive(parser: Parser, data: bytes, chunk_sizes: list[int]) -> list[Message]:
    """Feed ``data`` in chunks and drain after each; assert the parser's contract at every call."""
    out: list[Message] = []
    pos = 0
    index = 0
    while pos < len(data) or index == 0:
        size = chunk_sizes[index % len(chunk_sizes)]
        index += 1
        chunk = data[pos : pos + size]
        pos += size
        try:
            parser.feed(chunk)
        except pg.ProtocolError:
            assert parser.failed
            return out
        # Each message consumes at least 5 bytes, so this bound can only be hit by a loop that does not advance.
        for _ in range(len(data) + 2):
            try:
                message = parser.next_message()
            except pg.ProtocolError as error:
                assert error.sqlstate in {"08P01", "54000", "22021", "0A000"}
                assert parser.failed
                try:
                    parser.next_message()
                except pg.ProtocolError:
                    return out
                raise AssertionError("a failed parser returned normally") from None
            if message is None:
                break
            assert isinstance(message, Message)
            out.append(message)
        else:
            raise AssertionError("parser kept returning messages without consuming input")
    return out


@FUZZ
@given(st.binary(max_size=300), chunkings)
def test_random_bytes_into_startup_phase(data: bytes, chunks: list[int]) -> None:
    drive(pg.FrontendParser(), data, chunks)


@FUZZ
@given(st.binary(max_size=300), chunkings)
def test_random_bytes_into_regular_phase(data: bytes, chunks: list[int]) -> None:
    drive(pg.FrontendParser(expect_startup=False), data, chunks)


@FUZZ
@given(st.binary(max_size=300), chunkings)
def test_random_bytes_into_backend_parser(data: bytes, chunks: list[int]) -> None:
    drive(pg.BackendParser(), data, chunks)


def framed(type_codes: list[int]) -> st.SearchStrategy[bytes]:
    """Correct framing around random bodies: the length word is right, the content is not."""
    one = st.tuples(st.sampled_from(type_codes), st.binary(max_size=80)).map(
        lambda pair: bytes((pair[0],)) + struct.pack("!i", len(pair[1]) + 4) + pair[1]
    )
    return st.lists(one, min_size=1, max_size=6).map(b"".join)


startup_codes = [pg.PROTOCOL_3_0, pg.PROTOCOL_3_2, pg.SSL_REQUEST_CODE, pg.GSSENC_REQUEST_CODE, pg.CANCEL_REQUEST_CODE]
framed_startup = st.tuples(st.sampled_from(startup_codes), st.binary(max_size=80)).map(
    lambda pair: struct.pack("!iI", len(pair[1]) + 8, pair[0]) + pair[1]
)


@FUZZ
@given(framed(sorted(FRONTEND_DECODERS)), chunkings)
def test_framed_garbage_frontend(data: bytes, chunks: list[int]) -> None:
    drive(pg.FrontendParser(expect_startup=False), data, chunks)


@FUZZ
@given(framed(sorted(BACKEND_DECODERS)), chunkings)
def test_framed_garbage_backend(data: bytes, chunks: list[int]) -> None:
    drive(pg.BackendParser(), data, chunks)


@FUZZ
@given(st.lists(framed_startup, min_size=1, max_size=4).map(b"".join), chunkings)
def test_framed_garbage_startup(data: bytes, chunks: list[int]) -> None:
    drive(pg.FrontendParser(), data, chunks)


@st.composite
def mutated(draw: st.DrawFn, messages: st.SearchStrategy[Message]) -> bytes:
    """A valid stream with a few bytes overwritten, inserted or deleted."""
    data = bytearray(b"".join(pg.encode(m) for m in draw(st.lists(messages, min_size=1, max_size=5))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[at : at + draw(st.integers(1, 4))]
    return bytes(data)


@FUZZ
@given(mutated(regular_frontend_messages), chunkings)
def test_mutated_frontend_streams(data: bytes, chunks: list[int]) -> None:
    drive(pg.FrontendParser(expect_startup=False), data, chunks)


@FUZZ
@given(mutated(startup_packets), chunkings)
def test_mutated_startup_streams(data: bytes, chunks: list[int]) -> None:
    drive(pg.FrontendParser(), data, chunks)


@FUZZ
@given(mutated(backend_messages), chunkings)
def test_mutated_backend_streams(data: bytes, chunks: list[int]) -> None:
    drive(pg.BackendParser(), data, chunks)


@FUZZ
@given(st.binary(max_size=120))
def test_payload_helpers_only_raise_protocol_error(payload: bytes) -> None:
    for helper in (pg.parse_sasl_initial_response, pg.parse_password):
        with contextlib.suppress(pg.ProtocolError):
            helper(payload)
