"""Message codecs of gateway.pgwire: round trips for every message type, hand-written byte vectors, and
malformed bodies.

The hypothesis strategies defined here are reused by the parser and fuzz tests.
"""

from __future__ import annotations

import struct
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import pgwire as pg
from gateway.pgwire.base import Message

# --- strategies --------------------------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=24)
nonempty_text = text.filter(bool)
int16 = st.integers(-(2**15), 2**15 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
uint8 = st.integers(0, 255)
payload = st.binary(max_size=64)
secret_keys = st.binary(min_size=4, max_size=256)
report_fields = st.dictionaries(st.characters(min_codepoint=1, max_codepoint=255), text, max_size=8)


@st.composite
def binds(draw: st.DrawFn) -> pg.Bind:
    params = draw(st.lists(st.none() | payload, max_size=6).map(tuple))
    format_count = draw(st.sampled_from(sorted({0, 1, len(params)})))
    return pg.Bind(
        draw(text),
        draw(text),
        tuple(draw(st.lists(int16, min_size=format_count, max_size=format_count))),
        params,
        tuple(draw(st.lists(int16, max_size=6))),
    )


startup_packets: st.SearchStrategy[pg.StartupPacket] = st.one_of(
    st.builds(
        pg.StartupMessage,
        st.integers(3 << 16, (3 << 16) | 0xFFFF),
        st.dictionaries(nonempty_text, text, max_size=6),
    ),
    st.just(pg.SSLRequest()),
    st.just(pg.GSSENCRequest()),
    st.builds(pg.CancelRequest, int32, secret_keys),
)

regular_frontend_messages: st.SearchStrategy[pg.RegularFrontendMessage] = st.one_of(
    st.builds(pg.PasswordMessage, payload),
    st.builds(pg.Query, text),
    st.builds(pg.Parse, text, text, st.lists(uint32, max_size=6).map(tuple)),
    binds(),
    st.builds(pg.Describe, st.sampled_from(["S", "P"]), text),
    st.builds(pg.Close, st.sampled_from(["S", "P"]), text),
    st.builds(pg.Execute, text, int32),
    st.just(pg.Sync()),
    st.just(pg.Flush()),
    st.just(pg.Terminate()),
    st.builds(pg.CopyData, payload),
    st.just(pg.CopyDone()),
    st.builds(pg.CopyFail, text),
    st.builds(pg.FunctionCall, payload),
)

field_descriptions = st.builds(pg.FieldDescription, text, uint32, int16, uint32, int16, int32, int16)

backend_messages: st.SearchStrategy[pg.BackendMessage] = st.one_of(
    st.just(pg.AuthenticationOk()),
    st.just(pg.AuthenticationCleartextPassword()),
    st.builds(pg.AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.builds(pg.AuthenticationSASL, st.lists(nonempty_text, max_size=4).map(tuple)),
    st.builds(pg.AuthenticationSASLContinue, payload),
    st.builds(pg.AuthenticationSASLFinal, payload),
    st.builds(pg.ParameterStatus, text, text),
    st.builds(pg.BackendKeyData, int32, secret_keys),
    st.builds(pg.ReadyForQuery, st.sampled_from(["I", "T", "E"])),
    st.builds(pg.NegotiateProtocolVersion, int32, st.lists(text, max_size=4).map(tuple)),
    st.builds(pg.RowDescription, st.lists(field_descriptions, max_size=5).map(tuple)),
    st.builds(pg.DataRow, st.lists(st.none() | payload, max_size=8).map(tuple)),
    st.builds(pg.CommandComplete, text),
    st.just(pg.EmptyQueryResponse()),
    st.builds(pg.ErrorResponse, report_fields),
    st.builds(pg.NoticeResponse, report_fields),
    st.just(pg.ParseComplete()),
    st.just(pg.BindComplete()),
    st.just(pg.CloseComplete()),
    st.just(pg.NoData()),
    st.just(pg.PortalSuspended()),
    st.builds(pg.ParameterDescription, st.lists(uint32, max_size=6).map(tuple)),
    st.builds(pg.CopyInResponse, uint8, st.lists(int16, max_size=6).map(tuple)),
    st.builds(pg.CopyOutResponse, uint8, st.lists(int16, max_size=6).map(tuple)),
    st.builds(pg.CopyBothResponse, uint8, st.lists(int16, max_size=6).map(tuple)),
    st.builds(pg.CopyData, payload),
    st.just(pg.CopyDone()),
    st.builds(pg.NotificationResponse, int32, text, text),
    st.builds(pg.FunctionCallResponse, st.none() | payload),
)


def _classes(alias: object) -> set[type]:
    found: set[type] = set()
    for arg in typing.get_args(alias):
        found |= _classes(arg) if typing.get_args(arg) else {arg}
    return found


def _strategy_classes(strategy: st.SearchStrategy[typing.Any]) -> set[type]:
    # Draw many examples and collect the classes produced; one_of picks branches uniformly enough.
    seen: set[type] = set()

    @settings(max_examples=400, database=None)
    @given(strategy)
    def collect(message: Message) -> None:
        seen.add(type(message))

    collect()
    return seen


# --- coverage of the strategies --------------------------------------------------------------------------


def test_strategies_cover_every_message_type() -> None:
    """Guards the round trips below: a message type added to the unions must get a strategy too."""
    assert _strategy_classes(startup_packets) == _classes(pg.StartupPacket)
    assert _strategy_classes(regular_frontend_messages) == _classes(pg.RegularFrontendMessage)
    assert _strategy_classes(backend_messages) == _classes(pg.BackendMessage)


# --- round trips -----------------------------------------------------------------------------------------


@given(startup_packets)
def test_startup_packets_round_trip(message: pg.StartupPacket) -> None:
    assert pg.decode_frontend(pg.encode(message), startup=True) == message


@given(regular_frontend_messages)
def test_frontend_messages_round_trip(message: pg.RegularFrontendMessage) -> None:
    assert pg.decode_frontend(pg.encode(message)) == message


@given(backend_messages)
def test_backend_messages_round_trip(message: pg.BackendMessage) -> None:
    assert pg.decode_backend(pg.encode(message)) == message


@given(backend_messages | regular_frontend_messages | startup_packets)
def test_length_word_matches_frame(message: Message) -> None:
    frame = pg.encode(message)
    offset = len(message.type_code)
    (length,) = struct.unpack_from("!i", frame, offset)
    assert length == len(frame) - offset


# --- known byte vectors ----------------------------------------------------------------------------------

KNOWN_FRONTEND = [
    (pg.Query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00"),
    (pg.Sync(), b"S\x00\x00\x00\x04"),
    (pg.Terminate(), b"X\x00\x00\x00\x04"),
    (pg.Execute("", 0), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"),
    (pg.Describe("P", "p1"), b"D\x00\x00\x00\x08Pp1\x00"),
    (pg.Parse("s1", "SELECT $1", (23,)), b"P\x00\x00\x00\x17s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17"),
    (
        pg.Bind("", "s1", (1,), (b"\x00\x00\x00\x2a", None), (0,)),
        b"B\x00\x00\x00\x1e\x00s1\x00\x00\x01\x00\x01\x00\x02\x00\x00\x00\x04\x00\x00\x00\x2a\xff\xff\xff\xff"
        b"\x00\x01\x00\x00",
    ),
    (pg.PasswordMessage(b"secret\x00"), b"p\x00\x00\x00\x0bsecret\x00"),
]

KNOWN_STARTUP = [
    (pg.SSLRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
    (pg.GSSENCRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x30"),
    (pg.CancelRequest(1234, b"\x01\x02\x03\x04"), b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x04\xd2\x01\x02\x03\x04"),
    (
        pg.StartupMessage(pg.PROTOCOL_3_0, {"user": "alice", "database": "clinic"}),
        b"\x00\x00\x00\x24\x00\x03\x00\x00user\x00alice\x00database\x00clinic\x00\x00",
    ),
]

KNOWN_BACKEND = [
    (pg.ReadyForQuery("I"), b"Z\x00\x00\x00\x05I"),
    (pg.AuthenticationOk(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
    (pg.AuthenticationMD5Password(b"abcd"), b"R\x00\x00\x00\x0c\x00\x00\x00\x05abcd"),
    (pg.AuthenticationSASL(("SCRAM-SHA-256",)), b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"),
    (pg.CommandComplete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00"),
    (pg.DataRow((b"a", None)), b"D\x00\x00\x00\x0f\x00\x02\x00\x00\x00\x01a\xff\xff\xff\xff"),
    (
        pg.RowDescription((pg.FieldDescription("id", 16384, 1, 23, 4, -1, 0),)),
        b"T\x00\x00\x00\x1b\x00\x01id\x00\x00\x00\x40\x00\x00\x01\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00",
    ),
    (
        pg.ErrorResponse({"S": "ERROR", "C": "42501", "M": "no"}),
        b"E\x00\x00\x00\x17SERROR\x00C42501\x00Mno\x00\x00",
    ),
    (pg.ParameterStatus("TimeZone", "UTC"), b"S\x00\x00\x00\x11TimeZone\x00UTC\x00"),
    (pg.BackendKeyData(7, b"\x00\x00\x00\x09"), b"K\x00\x00\x00\x0c\x00\x00\x00\x07\x00\x00\x00\x09"),
    (pg.CopyOutResponse(0, (0, 0)), b"H\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x00"),
    (pg.NegotiateProtocolVersion(0, ("_pq_.x",)), b"v\x00\x00\x00\x13\x00\x00\x00\x00\x00\x00\x00\x01_pq_.x\x00"),
]


@pytest.mark.parametrize(("message", "frame"), KNOWN_FRONTEND)
def test_known_frontend_vectors(message: pg.RegularFrontendMessage, frame: bytes) -> None:
    assert pg.encode(message) == frame
    assert pg.decode_frontend(frame) == message


@pytest.mark.parametrize(("message", "frame"), KNOWN_STARTUP)
def test_known_startup_vectors(message: pg.StartupPacket, frame: bytes) -> None:
    assert pg.encode(message) == frame
    assert pg.decode_frontend(frame, startup=True) == message


@pytest.mark.parametrize(("message", "frame"), KNOWN_BACKEND)
def test_known_backend_vectors(message: pg.BackendMessage, frame: bytes) -> None:
    assert pg.encode(message) == frame
    assert pg.decode_backend(frame) == message


def test_protocol_3_2_long_cancel_key() -> None:
    key = bytes(range(32))
    request = pg.CancelRequest(99, key)
    assert pg.decode_frontend(pg.encode(request), startup=True) == request
    assert pg.decode_backend(pg.encode(pg.BackendKeyData(99, key))) == pg.BackendKeyData(99, key)


# --- malformed input ------------------------------------------------------------------------------------


def frame(type_code: bytes, body: bytes) -> bytes:
    return type_code + struct.pack("!i", len(body) + 4) + body


def startup_frame(body: bytes) -> bytes:
    return struct.pack("!i", len(body) + 4) + body


MALFORMED_FRONTEND = [
    pytest.param(frame(b"Q", b"SELECT 1"), "08P01", id="query-missing-nul"),
    pytest.param(frame(b"Q", b"SELECT 1\x00x"), "08P01", id="query-trailing-bytes"),
    pytest.param(frame(b"Q", b"SELECT '\xff'\x00"), "22021", id="query-invalid-utf8"),
    pytest.param(frame(b"P", b"s\x00SELECT \xc3\x28\x00\x00\x00"), "22021", id="parse-invalid-utf8"),
    pytest.param(frame(b"P", b"s\x00q\x00\x00\x05\x00\x00\x00\x17"), "08P01", id="parse-count-exceeds-body"),
    pytest.param(frame(b"P", b"s\x00q\x00\x00"), "08P01", id="parse-truncated-count"),
    pytest.param(frame(b"B", b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00"), "08P01", id="bind-negative-length"),
    pytest.param(frame(b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x09ab\x00\x00"), "08P01", id="bind-value-overrun"),
    pytest.param(
        frame(b"B", b"\x00\x00\x00\x02\x00\x00\x00\x00\x00\x03" + b"\xff\xff\xff\xff" * 3 + b"\x00\x00"),
        "08P01",
        id="bind-format-count-mismatch",
    ),
    pytest.param(frame(b"B", b"\x00\x00\x00\x00\x00\x00"), "08P01", id="bind-missing-result-formats"),
    pytest.param(frame(b"D", b"Xname\x00"), "08P01", id="describe-bad-kind"),
    pytest.param(frame(b"C", b"S"), "08P01", id="close-missing-name"),
    pytest.param(frame(b"E", b"\x00\x00\x00"), "08P01", id="execute-truncated"),
    pytest.param(frame(b"S", b"\x00"), "08P01", id="sync-with-body"),
    pytest.param(frame(b"f", b"oops"), "08P01", id="copyfail-missing-nul"),
    pytest.param(frame(b"Z", b""), "08P01", id="unknown-type"),
]

MALFORMED_STARTUP = [
    pytest.param(startup_frame(b"\x00\x02\x00\x00user\x00x\x00\x00"), "0A000", id="protocol-2"),
    pytest.param(startup_frame(b"\x00\x03\x00\x00user\x00a\x00user\x00b\x00\x00"), "08P01", id="duplicate-param"),
    pytest.param(startup_frame(b"\x00\x03\x00\x00user\x00a\x00"), "08P01", id="missing-terminator"),
    pytest.param(startup_frame(b"\x00\x03\x00\x00user\x00"), "08P01", id="name-without-value"),
    pytest.param(startup_frame(b"\x00\x03\x00\x00user\x00a\x00\x00x"), "08P01", id="trailing-after-terminator"),
    pytest.param(startup_frame(b"\x00\x03\x00\x00us\xffer\x00a\x00\x00"), "22021", id="invalid-utf8-name"),
    pytest.param(startup_frame(b"\x04\xd2\x16\x2f\x00"), "08P01", id="ssl-request-extra-byte"),
    pytest.param(startup_frame(b"\x04\xd2\x16\x2e\x00\x00\x00\x01abc"), "08P01", id="cancel-key-too-short"),
    pytest.param(startup_frame(b"\x04\xd2\x16\x2e\x00\x00\x00\x01" + b"k" * 257), "08P01", id="cancel-key-too-long"),
    pytest.param(startup_frame(b"\x04\xd2\x16\x31"), "0A000", id="unknown-request-code"),
]

MALFORMED_BACKEND = [
    pytest.param(frame(b"D", b"\x00\x03\x00\x00\x00\x01a"), "08P01", id="datarow-count-exceeds-body"),
    pytest.param(frame(b"D", b"\x00\x01\xff\xff\xff\xfb"), "08P01", id="datarow-negative-length"),
    pytest.param(frame(b"D", b"\x00\x01\x00\x00\x00\x05ab"), "08P01", id="datarow-value-overrun"),
    pytest.param(frame(b"D", b"\x00\x00\x00"), "08P01", id="datarow-trailing-bytes"),
    pytest.param(frame(b"D", b"\x00"), "08P01", id="datarow-truncated-count"),
    pytest.param(frame(b"Z", b"Q"), "08P01", id="rfq-bad-status"),
    pytest.param(frame(b"Z", b"II"), "08P01", id="rfq-trailing"),
    pytest.param(frame(b"R", b"\x00\x00\x00\x07"), "0A000", id="auth-gss-unsupported"),
    pytest.param(frame(b"R", b"\x00\x00\x00\x05ab"), "08P01", id="auth-md5-short-salt"),
    pytest.param(frame(b"R", b"\x00\x00\x00\x0aSCRAM-SHA-256\x00"), "08P01", id="auth-sasl-unterminated-list"),
    pytest.param(frame(b"R", b"\x00\x00"), "08P01", id="auth-truncated-code"),
    pytest.param(frame(b"E", b"SERROR\x00"), "08P01", id="error-missing-terminator"),
    pytest.param(frame(b"E", b"Ma\x00Mb\x00\x00"), "08P01", id="error-duplicate-field"),
    pytest.param(frame(b"T", b"\x00\x01id\x00\x00\x00"), "08P01", id="rowdescription-truncated"),
    pytest.param(frame(b"v", b"\x00\x00\x00\x00\x7f\xff\xff\xff"), "08P01", id="negotiate-huge-count"),
    pytest.param(frame(b"v", b"\x00\x00\x00\x00\xff\xff\xff\xff"), "08P01", id="negotiate-negative-count"),
    pytest.param(frame(b"K", b"\x00\x00\x00\x01\x00"), "08P01", id="key-too-short"),
    pytest.param(frame(b"V", b"\xff\xff\xff\xfe"), "08P01", id="function-result-negative-length"),
    pytest.param(frame(b"S", b"name\x00"), "08P01", id="parameter-status-missing-value"),
    pytest.param(frame(b"Q", b""), "08P01", id="frontend-type-from-server"),
]


@pytest.mark.parametrize(("data", "sqlstate"), MALFORMED_FRONTEND)
def test_malformed_frontend_messages(data: bytes, sqlstate: str) -> None:
    with pytest.raises(pg.ProtocolError) as caught:
        pg.decode_frontend(data)
    assert caught.value.sqlstate == sqlstate


@pytest.mark.parametrize(("data", "sqlstate"), MALFORMED_STARTUP)
def test_malformed_startup_packets(data: bytes, sqlstate: str) -> None:
    with pytest.raises(pg.ProtocolError) as caught:
        pg.decode_frontend(data, startup=True)
    assert caught.value.sqlstate == sqlstate


@pytest.mark.parametrize(("data", "sqlstate"), MALFORMED_BACKEND)
def test_malformed_backend_messages(data: bytes, sqlstate: str) -> None:
    with pytest.raises(pg.ProtocolError) as caught:
        pg.decode_backend(data)
    assert caught.value.sqlstate == sqlstate


def test_error_response_tolerates_non_utf8_text() -> None:
    decoded = pg.decode_backend(frame(b"E", b"SFATAL\x00Mcaf\xe9\x00\x00"))
    assert isinstance(decoded, pg.ErrorResponse)
    assert decoded.message == "caf\ufffd"


def test_one_shot_decoders_want_exactly_one_frame() -> None:
    with pytest.raises(pg.ProtocolError, match="incomplete"):
        pg.decode_backend(pg.encode(pg.ReadyForQuery("I"))[:-1])
    with pytest.raises(pg.ProtocolError, match="after the end"):
        pg.decode_backend(pg.encode(pg.ReadyForQuery("I")) * 2)


# --- encoding refuses what cannot be framed --------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        pg.Query("SELECT 1\x00; DROP TABLE patients"),
        pg.StartupMessage(parameters={"": "x"}),
        pg.StartupMessage(parameters={"user": "a\x00b"}),
        pg.CancelRequest(1, b"abc"),
        pg.BackendKeyData(1, b"k" * 257),
        pg.Bind(param_formats=(0, 1), params=(b"a", b"b", b"c")),
        pg.Execute("", 2**31),
        pg.Parse("", "", (-1,)),
        pg.Parse("", "", (0,) * 70_000),
        pg.AuthenticationMD5Password(b"abc"),
        pg.AuthenticationSASL(("",)),
        pg.ReadyForQuery("X"),  # type: ignore[arg-type]
        pg.Describe("X", ""),  # type: ignore[arg-type]
        pg.ErrorResponse({"MM": "x"}),
        pg.CopyInResponse(256),
    ],
)
def test_encode_rejects_unframeable_fields(message: Message) -> None:
    with pytest.raises(ValueError):
        pg.encode(message)


# --- helpers ------------------------------------------------------------------------------------------------


def test_error_response_helper_fills_standard_fields() -> None:
    error = pg.error_response("ERROR", "42501", "permission denied", detail="PHI column", hint="ask for approval")
    assert error.fields == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "42501",
        "M": "permission denied",
        "D": "PHI column",
        "H": "ask for approval",
    }
    assert (error.severity, error.sqlstate, error.message, error.detail, error.hint) == (
        "ERROR",
        "42501",
        "permission denied",
        "PHI column",
        "ask for approval",
    )
    assert not error.is_fatal
    assert pg.error_response("FATAL", "08P01", "bye").is_fatal
    assert error.fields[pg.ErrorField.SQLSTATE] == "42501"


def test_notice_response_helper() -> None:
    notice = pg.notice_response("WARNING", "01000", "masked", hint="h")
    assert notice.fields == {"S": "WARNING", "V": "WARNING", "C": "01000", "M": "masked", "H": "h"}
    assert notice.detail is None


@pytest.mark.parametrize(
    "call",
    [
        lambda: pg.error_response("WARNING", "01000", "x"),
        lambda: pg.notice_response("ERROR", "42000", "x"),
        lambda: pg.error_response("ERROR", "4250", "x"),
        lambda: pg.error_response("ERROR", "4250a", "x"),
    ],
)
def test_report_helpers_validate(call: typing.Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        call()


def test_protocol_error_response() -> None:
    error = pg.protocol_error_response(pg.ProtocolError("54000", "too big"))
    assert (error.severity, error.sqlstate, error.message) == ("FATAL", "54000", "too big")
    assert str(pg.ProtocolError("08P01", "bad")) == "bad (SQLSTATE 08P01)"


def test_severity_prefers_non_localized_field() -> None:
    assert pg.ErrorResponse({"S": "FEHLER", "V": "ERROR"}).severity == "ERROR"
    assert pg.ErrorResponse({"S": "FATAL"}).is_fatal


def test_bind_param_format() -> None:
    assert pg.Bind(params=(b"1", b"2")).param_format(1) == 0
    assert pg.Bind(param_formats=(1,), params=(b"1", b"2")).param_format(1) == 1
    assert pg.Bind(param_formats=(0, 1), params=(b"1", b"2")).param_format(1) == 1


@given(nonempty_text, st.none() | payload)
def test_sasl_initial_response_round_trip(mechanism: str, data: bytes | None) -> None:
    message = pg.sasl_initial_response(mechanism, data)
    assert pg.parse_sasl_initial_response(message.payload) == (mechanism, data)


def test_sasl_initial_response_vector() -> None:
    payload = b"SCRAM-SHA-256\x00\x00\x00\x00\x03n,,"
    assert pg.parse_sasl_initial_response(payload) == ("SCRAM-SHA-256", b"n,,")
    assert pg.parse_sasl_initial_response(b"SCRAM-SHA-256\x00\xff\xff\xff\xff") == ("SCRAM-SHA-256", None)
    assert pg.sasl_response(b"c=biws").payload == b"c=biws"


@pytest.mark.parametrize(
    "payload",
    [b"SCRAM-SHA-256", b"SCRAM\x00\x00\x00", b"SCRAM\x00\x00\x00\x00\x05abc", b"SCRAM\x00\xff\xff\xff\xfe", b""],
)
def test_sasl_initial_response_malformed(payload: bytes) -> None:
    with pytest.raises(pg.ProtocolError):
        pg.parse_sasl_initial_response(payload)


def test_password_helpers() -> None:
    assert pg.parse_password(pg.password_message("s3cret").payload) == "s3cret"
    for bad in (b"nul-less", b"a\x00b", b"\xff\x00"):
        with pytest.raises(pg.ProtocolError):
            pg.parse_password(bad)


def test_messages_are_immutable() -> None:
    query = pg.Query("SELECT 1")
    with pytest.raises(AttributeError):
        query.sql = "DROP TABLE x"  # type: ignore[misc]
