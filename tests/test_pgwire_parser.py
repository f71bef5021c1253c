"""Incremental parsing in gateway.pgwire: chunking, leftovers, phase switching, size caps, failed state."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import pgwire as pg
from gateway.pgwire.base import Message
from tests.test_pgwire_messages import backend_messages, regular_frontend_messages

frontend_streams = st.lists(regular_frontend_messages, min_size=1, max_size=12)
backend_streams = st.lists(backend_messages, min_size=1, max_size=12)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def parse_chunks(parser: pg.FrontendParser | pg.BackendParser, chunks: list[bytes]) -> list[Message]:
    out: list[Message] = []
    for chunk in chunks:
        parser.feed(chunk)
        out.extend(parser.messages())
    return out


# --- delivery patterns -----------------------------------------------------------------------------------


@given(frontend_streams)
def test_frontend_stream_whole_and_bytewise(messages: list[pg.RegularFrontendMessage]) -> None:
    data = b"".join(map(pg.encode, messages))
    assert parse_chunks(pg.FrontendParser(expect_startup=False), [data]) == messages
    bytewise = [data[i : i + 1] for i in range(len(data))]
    assert parse_chunks(pg.FrontendParser(expect_startup=False), bytewise) == messages


@given(backend_streams)
def test_backend_stream_whole_and_bytewise(messages: list[pg.BackendMessage]) -> None:
    data = b"".join(map(pg.encode, messages))
    assert parse_chunks(pg.BackendParser(), [data]) == messages
    bytewise = [data[i : i + 1] for i in range(len(data))]
    assert parse_chunks(pg.BackendParser(), bytewise) == messages


@given(frontend_streams, st.lists(st.integers(min_value=0), max_size=20))
def test_frontend_stream_random_chunks(messages: list[pg.RegularFrontendMessage], cuts: list[int]) -> None:
    data = b"".join(map(pg.encode, messages))
    parser = pg.FrontendParser(expect_startup=False)
    assert parse_chunks(parser, split(data, cuts)) == messages
    assert parser.buffered == 0


@given(backend_streams, st.lists(st.integers(min_value=0), max_size=20))
def test_backend_stream_random_chunks(messages: list[pg.BackendMessage], cuts: list[int]) -> None:
    data = b"".join(map(pg.encode, messages))
    parser = pg.BackendParser()
    assert parse_chunks(parser, split(data, cuts)) == messages
    assert parser.buffered == 0


@given(backend_streams, backend_messages, st.data())
def test_partial_next_message_is_retained(
    messages: list[pg.BackendMessage], following: pg.BackendMessage, data: st.DataObject
) -> None:
    next_frame = pg.encode(following)
    partial = next_frame[: data.draw(st.integers(0, len(next_frame) - 1))]
    parser = pg.BackendParser()
    parser.feed(b"".join(map(pg.encode, messages)) + partial)
    assert list(parser.messages()) == messages
    assert parser.next_message() is None
    assert parser.buffered == len(partial)
    parser.feed(next_frame[len(partial) :])
    assert parser.next_message() == following
    assert parser.buffered == 0


@given(regular_frontend_messages)
def test_none_until_the_last_byte(message: pg.RegularFrontendMessage) -> None:
    frame = pg.encode(message)
    parser = pg.FrontendParser(expect_startup=False)
    for byte in frame[:-1]:
        parser.feed(bytes((byte,)))
        assert parser.next_message() is None
    parser.feed(frame[-1:])
    assert parser.next_message() == message
    assert parser.next_message() is None


def test_empty_feed_and_empty_parser() -> None:
    parser = pg.BackendParser()
    parser.feed(b"")
    assert parser.next_message() is None
    assert list(parser.messages()) == []


def test_buffer_is_compacted_over_a_long_stream() -> None:
    row = pg.encode(pg.DataRow((b"x" * 100, None, b"y" * 50)))
    stream = row * 20_000
    parser = pg.BackendParser()
    high_water = 0
    for start in range(0, len(stream), 8192):
        parser.feed(stream[start : start + 8192])
        while parser.next_message() is not None:
            pass
        high_water = max(high_water, len(parser._buf))
    assert high_water < 200_000  # bounded by the compaction threshold, not by the 3 MB stream


# --- startup phase ---------------------------------------------------------------------------------------


STARTUP = pg.StartupMessage(pg.PROTOCOL_3_0, {"user": "alice", "database": "clinic"})


def test_startup_then_typed_messages_in_one_buffer() -> None:
    stream = pg.encode(pg.SSLRequest()) + pg.encode(pg.GSSENCRequest()) + pg.encode(STARTUP)
    stream += pg.encode(pg.PasswordMessage(b"pw\x00")) + pg.encode(pg.Query("SELECT 1"))
    parser = pg.FrontendParser()
    assert parser.in_startup_phase
    assert list(parser.messages()) == []  # nothing fed yet
    parser.feed(stream)
    assert list(parser.messages()) == [
        pg.SSLRequest(),
        pg.GSSENCRequest(),
        STARTUP,
        pg.PasswordMessage(b"pw\x00"),
        pg.Query("SELECT 1"),
    ]
    assert not parser.in_startup_phase


def test_startup_packet_split_bytewise() -> None:
    frame = pg.encode(STARTUP)
    parser = pg.FrontendParser()
    for byte in frame[:-1]:
        parser.feed(bytes((byte,)))
        assert parser.next_message() is None
    parser.feed(frame[-1:])
    assert parser.next_message() == STARTUP


def test_startup_done_switches_explicitly() -> None:
    parser = pg.FrontendParser()
    parser.startup_done()
    parser.startup_done()
    parser.feed(pg.encode(pg.Sync()))
    assert parser.next_message() == pg.Sync()


def test_ssl_request_stays_in_startup_phase() -> None:
    parser = pg.FrontendParser()
    parser.feed(pg.encode(pg.SSLRequest()))
    assert parser.next_message() == pg.SSLRequest()
    assert parser.in_startup_phase
    parser.begin_encryption()  # nothing pipelined: fine


def test_cleartext_bytes_after_ssl_request_are_refused() -> None:
    parser = pg.FrontendParser()
    parser.feed(pg.encode(pg.SSLRequest()) + pg.encode(STARTUP))
    assert parser.next_message() == pg.SSLRequest()
    with pytest.raises(pg.ProtocolError) as caught:
        parser.begin_encryption()
    assert caught.value.sqlstate == "08P01"
    assert parser.failed


def test_encryption_response_from_server() -> None:
    parser = pg.BackendParser()
    assert parser.next_encryption_response() is None
    parser.feed(b"S")
    assert parser.next_encryption_response() == "S"

    parser = pg.BackendParser()
    parser.feed(b"N" + pg.encode(pg.AuthenticationOk()))
    assert parser.next_encryption_response() == "N"
    assert parser.next_message() == pg.AuthenticationOk()

    parser = pg.BackendParser()
    error = pg.error_response("FATAL", "53300", "too many connections")
    parser.feed(pg.encode(error))
    assert parser.next_encryption_response() == "E"
    assert parser.next_message() == error


@pytest.mark.parametrize("data", [b"S\x00", b"G" + pg.encode(pg.AuthenticationOk()), b"X"])
def test_bad_encryption_responses(data: bytes) -> None:
    parser = pg.BackendParser()
    parser.feed(data)
    with pytest.raises(pg.ProtocolError):
        parser.next_encryption_response()


# --- caps and length checks ------------------------------------------------------------------------------


def assert_fails(parser: pg.FrontendParser | pg.BackendParser, sqlstate: str) -> None:
    with pytest.raises(pg.ProtocolError) as caught:
        parser.next_message()
    assert caught.value.sqlstate == sqlstate
    assert parser.failed
    assert parser.buffered == 0  # the buffer is released
    with pytest.raises(pg.ProtocolError) as again:
        parser.next_message()
    assert again.value.sqlstate == sqlstate
    with pytest.raises(pg.ProtocolError):
        parser.feed(b"more")


def test_oversized_message_fails_on_the_header() -> None:
    parser = pg.FrontendParser(expect_startup=False)
    parser.feed(b"Q" + struct.pack("!i", pg.DEFAULT_MAX_MESSAGE_SIZE + 1))
    assert_fails(parser, "54000")


def test_message_at_the_cap_is_accepted() -> None:
    parser = pg.FrontendParser(max_message_size=104, expect_startup=False)
    parser.feed(pg.encode(pg.Query("x" * 99)))
    assert parser.next_message() == pg.Query("x" * 99)
    parser.feed(pg.encode(pg.Query("x" * 100)))
    assert_fails(parser, "54000")


def test_backend_cap_is_configurable() -> None:
    parser = pg.BackendParser(max_message_size=1000)
    parser.feed(b"D" + struct.pack("!i", 1001))
    assert_fails(parser, "54000")


@pytest.mark.parametrize(
    "header",
    [b"S" + struct.pack("!i", 20_000), b"p" + struct.pack("!i", 70_000), b"D" + struct.pack("!i", 10_001)],
    ids=["sync", "password", "describe"],
)
def test_small_message_types_have_tight_caps(header: bytes) -> None:
    parser = pg.FrontendParser(expect_startup=False)
    parser.feed(header)
    assert_fails(parser, "54000")


@pytest.mark.parametrize("length", [-1, 0, 3, -(2**31)])
def test_length_below_four_is_a_violation(length: int) -> None:
    for parser in (pg.FrontendParser(expect_startup=False), pg.BackendParser()):
        parser.feed(b"C" + struct.pack("!i", length))
        assert_fails(parser, "08P01")


def test_oversized_startup_packet() -> None:
    parser = pg.FrontendParser()
    parser.feed(struct.pack("!i", pg.MAX_STARTUP_PACKET_SIZE + 1))
    assert_fails(parser, "54000")


def test_startup_packet_at_the_cap() -> None:
    body = struct.pack("!I", pg.PROTOCOL_3_0) + b"options\x00"
    body += b"x" * (pg.MAX_STARTUP_PACKET_SIZE - 4 - len(body) - 2) + b"\x00\x00"
    parser = pg.FrontendParser()
    parser.feed(struct.pack("!i", len(body) + 4) + body)
    message = parser.next_message()
    assert isinstance(message, pg.StartupMessage)
    assert len(message.parameters["options"]) == pg.MAX_STARTUP_PACKET_SIZE - 4 - 4 - 8 - 2


@pytest.mark.parametrize("length", [-5, 0, 4, 7])
def test_startup_length_too_small(length: int) -> None:
    parser = pg.FrontendParser()
    parser.feed(struct.pack("!i", length))
    assert_fails(parser, "08P01")


def test_tls_client_hello_is_refused_as_startup() -> None:
    parser = pg.FrontendParser()
    parser.feed(bytes.fromhex("160301020001"))
    assert_fails(parser, "54000")


def test_unknown_type_fails_on_first_byte() -> None:
    parser = pg.FrontendParser(expect_startup=False)
    parser.feed(b"G")
    assert_fails(parser, "08P01")


def test_failure_inside_a_body_poisons_the_parser() -> None:
    parser = pg.FrontendParser(expect_startup=False)
    parser.feed(pg.encode(pg.Sync()) + b"Q\x00\x00\x00\x06\xff\x00" + pg.encode(pg.Sync()))
    assert parser.next_message() == pg.Sync()
    assert_fails(parser, "22021")


def test_max_message_size_must_be_sane() -> None:
    with pytest.raises(ValueError):
        pg.BackendParser(max_message_size=4)


def test_take_run_takes_a_run_of_one_type_and_leaves_what_ends_it() -> None:
    # The relay takes buffered DataRows in one go (issue 13): the same frames next_frame gives, in one piece
    # with their ends, then nothing consumed at the first frame of another type or an incomplete one.
    rows = [pg.DataRow((b"1", None, b"x" * n)).encode() for n in range(3)]
    tail = pg.CommandComplete("SELECT 3").encode()
    parser = pg.BackendParser()
    parser.feed(b"".join(rows) + tail[:3])
    run, ends = parser.take_run(ord("D"), 1 << 20)
    assert run == b"".join(rows) and [run[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)] == rows
    assert parser.take_run(ord("D"), 1 << 20) == (b"", [])  # a CommandComplete, not yet complete
    parser.feed(tail[3:])
    assert parser.take_run(ord("D"), 1 << 20) == (b"", []) and parser.buffered == len(tail)
    assert parser.next_frame() == (ord("C"), tail)
    assert parser.take_run(ord("D"), 1 << 20) == (b"", [])  # nothing buffered
    parser.feed(rows[0][:4])
    assert parser.take_run(ord("D"), 1 << 20) == (b"", []) and parser.buffered == 4  # a DataRow, incomplete


def test_take_run_stops_at_its_budget() -> None:
    rows = [pg.DataRow((b"x" * 10,)).encode() for _ in range(5)]
    parser = pg.BackendParser()
    parser.feed(b"".join(rows))
    assert parser.take_run(ord("D"), len(rows[0]) + 1) == (b"".join(rows[:2]), [len(rows[0]), 2 * len(rows[0])])
    assert parser.take_run(ord("D"), 1)[1] == [len(rows[0])]  # at least one frame
    assert parser.take_run(ord("D"), 1 << 20)[1] == [len(rows[0]), 2 * len(rows[0])]


def test_take_run_leaves_a_bad_length_to_next_frame() -> None:
    # The frames before it are taken; the bad one is refused by next_frame, as frame by frame.
    good = pg.DataRow((b"x",)).encode()
    for bad in (b"D" + struct.pack("!i", 3), pg.DataRow((b"x" * 32,)).encode()):
        parser = pg.BackendParser(max_message_size=24)
        parser.feed(good + bad)
        assert parser.take_run(ord("D"), 1 << 20) == (good, [len(good)])
        assert parser.take_run(ord("D"), 1 << 20) == (b"", [])
        with pytest.raises(pg.ProtocolError):
            parser.next_frame()
        with pytest.raises(pg.ProtocolError):
            parser.take_run(ord("D"), 1 << 20)  # failed for good
