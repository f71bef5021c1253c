"""Backend (server -> client) messages.

The gateway encodes these towards its clients and decodes them from the upstream PostgreSQL, so every
message has both directions of the codec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final, Literal, Self, TypeAlias, cast

from gateway.pgwire import primitives as wire
from gateway.pgwire.base import EmptyMessage, Message
from gateway.pgwire.common import CopyData, CopyDone
from gateway.pgwire.errors import FEATURE_NOT_SUPPORTED, PROTOCOL_VIOLATION, ProtocolError
from gateway.pgwire.frontend import check_secret_key, read_secret_key

TransactionStatus: TypeAlias = Literal["I", "T", "E"]
"""ReadyForQuery status: idle, in a transaction block, in a failed transaction block."""

FATAL_SEVERITIES: Final = frozenset({"FATAL", "PANIC"})


# --- authentication ('R' with an Int32 sub-code) ---------------------------------------------------------


class _Authentication(Message):
    """All authentication requests share type 'R'; ``auth_code`` tells them apart."""

    __slots__ = ()
    type_code: ClassVar[bytes] = b"R"
    auth_code: ClassVar[int]

    def encode_body(self) -> bytes:
        return wire.int32(self.auth_code) + self._encode_payload()

    def _encode_payload(self) -> bytes:
        return b""

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, cls.__name__)
        if reader.int32() != cls.auth_code:
            raise reader.error("wrong authentication code")
        message = cls._decode_payload(reader)
        reader.finish()
        return message

    @classmethod
    def _decode_payload(cls, reader: wire.Reader) -> Self:
        return cls()


@dataclass(frozen=True, slots=True)
class AuthenticationOk(_Authentication):
    """Authentication succeeded; ParameterStatus/BackendKeyData and the first ReadyForQuery follow."""

    auth_code: ClassVar[int] = 0


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(_Authentication):
    """Asks for the password in clear text (only sane over TLS)."""

    auth_code: ClassVar[int] = 3


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(_Authentication):
    """Asks for md5(md5(password + user) + salt), hex, prefixed with 'md5'."""

    auth_code: ClassVar[int] = 5
    salt: bytes

    def _encode_payload(self) -> bytes:
        if len(self.salt) != 4:
            raise ValueError(f"MD5 salt must be 4 bytes, got {len(self.salt)}")
        return self.salt

    @classmethod
    def _decode_payload(cls, reader: wire.Reader) -> Self:
        return cls(reader.take(4))


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(_Authentication):
    """Starts SASL; lists the mechanisms the server accepts, in order of preference."""

    auth_code: ClassVar[int] = 10
    mechanisms: tuple[str, ...]

    def _encode_payload(self) -> bytes:
        if not all(self.mechanisms):
            raise ValueError("SASL mechanism names must not be empty (an empty name ends the list)")
        return b"".join(wire.cstring(name) for name in self.mechanisms) + b"\x00"

    @classmethod
    def _decode_payload(cls, reader: wire.Reader) -> Self:
        mechanisms: list[str] = []
        while name := reader.cstring():
            mechanisms.append(name)
        return cls(tuple(mechanisms))


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(_Authentication):
    """A SASL challenge (for SCRAM, the server-first-message)."""

    auth_code: ClassVar[int] = 11
    data: bytes

    def _encode_payload(self) -> bytes:
        return self.data

    @classmethod
    def _decode_payload(cls, reader: wire.Reader) -> Self:
        return cls(reader.rest())


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(_Authentication):
    """SASL outcome data (for SCRAM, the server signature); AuthenticationOk follows."""

    auth_code: ClassVar[int] = 12
    data: bytes

    def _encode_payload(self) -> bytes:
        return self.data

    @classmethod
    def _decode_payload(cls, reader: wire.Reader) -> Self:
        return cls(reader.rest())


AuthenticationMessage: TypeAlias = (
    AuthenticationOk
    | AuthenticationCleartextPassword
    | AuthenticationMD5Password
    | AuthenticationSASL
    | AuthenticationSASLContinue
    | AuthenticationSASLFinal
)

_AUTHENTICATION_DECODERS: Final[dict[int, Callable[[bytes], AuthenticationMessage]]] = {
    cls.auth_code: cls.decode_body
    for cls in (
        AuthenticationOk,
        AuthenticationCleartextPassword,
        AuthenticationMD5Password,
        AuthenticationSASL,
        AuthenticationSASLContinue,
        AuthenticationSASLFinal,
    )
}


def _decode_authentication(body: bytes) -> AuthenticationMessage:
    code = wire.Reader(body, "Authentication").int32()
    decoder = _AUTHENTICATION_DECODERS.get(code)
    if decoder is None:
        # Kerberos, SCM, GSS and SSPI exist but the gateway never configures them upstream.
        raise ProtocolError(FEATURE_NOT_SUPPORTED, f"unsupported authentication request (code {code})")
    return decoder(body)


# --- session setup and status ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParameterStatus(Message):
    """'S': the current value of a reported run-time parameter (server_version, client_encoding...)."""

    type_code: ClassVar[bytes] = b"S"
    name: str
    value: str

    def encode_body(self) -> bytes:
        return wire.cstring(self.name) + wire.cstring(self.value)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "ParameterStatus")
        name = reader.cstring()
        value = reader.cstring()
        reader.finish()
        return cls(name, value)


@dataclass(frozen=True, slots=True)
class BackendKeyData(Message):
    """'K': what a client needs to send a CancelRequest later; 3.2 allows keys up to 256 bytes."""

    type_code: ClassVar[bytes] = b"K"
    process_id: int
    secret_key: bytes

    def encode_body(self) -> bytes:
        check_secret_key(self.secret_key)
        return wire.int32(self.process_id, "process id") + self.secret_key

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "BackendKeyData")
        process_id = reader.int32()
        return cls(process_id, read_secret_key(reader))


@dataclass(frozen=True, slots=True)
class ReadyForQuery(Message):
    """'Z': the server is idle and ready for the next query; carries the transaction status."""

    type_code: ClassVar[bytes] = b"Z"
    status: TransactionStatus

    def encode_body(self) -> bytes:
        if self.status not in ("I", "T", "E"):
            raise ValueError(f"transaction status must be 'I', 'T' or 'E', got {self.status!r}")
        return self.status.encode("ascii")

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "ReadyForQuery")
        status = chr(reader.uint8())
        if status not in ("I", "T", "E"):
            raise reader.error(f"unknown transaction status {status!r}")
        reader.finish()
        return cls(cast(TransactionStatus, status))


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(Message):
    """'v': the server speaks an older minor version and/or ignored some ``_pq_.`` startup options."""

    type_code: ClassVar[bytes] = b"v"
    newest_minor: int
    unrecognized_options: tuple[str, ...] = ()

    def encode_body(self) -> bytes:
        return b"".join(
            (
                wire.int32(self.newest_minor, "minor version"),
                wire.int32(len(self.unrecognized_options), "option count"),
                *(wire.cstring(option) for option in self.unrecognized_options),
            )
        )

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "NegotiateProtocolVersion")
        newest_minor = reader.int32()
        count = reader.int32()
        # Int32 count: bound it by the body (each option takes at least its terminator) before looping.
        if not 0 <= count <= reader.remaining():
            raise reader.error(f"option count {count} does not fit the body")
        options = tuple(reader.cstring() for _ in range(count))
        reader.finish()
        return cls(newest_minor, options)


# --- query results --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One column of a RowDescription. ``table_oid``/``column_attnum`` are 0 for computed columns."""

    name: str
    table_oid: int
    column_attnum: int
    type_oid: int
    type_size: int
    type_modifier: int
    format: int = 0

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.cstring(self.name),
                wire.uint32(self.table_oid, "table OID"),
                wire.int16(self.column_attnum, "column number"),
                wire.uint32(self.type_oid, "type OID"),
                wire.int16(self.type_size, "type size"),
                wire.int32(self.type_modifier, "type modifier"),
                wire.int16(self.format, "format code"),
            )
        )

    @classmethod
    def read(cls, reader: wire.Reader) -> Self:
        return cls(
            reader.cstring(),
            reader.uint32(),
            reader.int16(),
            reader.uint32(),
            reader.int16(),
            reader.int32(),
            reader.int16(),
        )


@dataclass(frozen=True, slots=True)
class RowDescription(Message):
    """'T': the columns of the rows that follow; masking needs ``type_oid`` and ``format`` per column."""

    type_code: ClassVar[bytes] = b"T"
    fields: tuple[FieldDescription, ...]

    def encode_body(self) -> bytes:
        return wire.uint16(len(self.fields), "column count") + b"".join(f.encode() for f in self.fields)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "RowDescription")
        fields = tuple(FieldDescription.read(reader) for _ in range(reader.uint16()))
        reader.finish()
        return cls(fields)


_INT32_UNPACK = wire.INT32.unpack_from
_UINT16_UNPACK = wire.UINT16.unpack_from
_INT32_PACK = wire.INT32.pack


@dataclass(frozen=True, slots=True)
class DataRow(Message):
    """'D': one row; each value is raw bytes in the column's format, or None for SQL NULL.

    The codec is hand-inlined (no Reader) because result streams are the hot path of the gateway.
    """

    type_code: ClassVar[bytes] = b"D"
    values: tuple[bytes | None, ...]

    def encode_body(self) -> bytes:
        parts = [wire.uint16(len(self.values), "column count")]
        append = parts.append
        for value in self.values:
            if value is None:
                append(wire.NULL_LENGTH)
            else:
                append(_INT32_PACK(len(value)))
                append(value)
        return b"".join(parts)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        size = len(body)
        if size < 2:
            raise _bad_data_row("message body is truncated")
        (count,) = _UINT16_UNPACK(body, 0)
        pos = 2
        values: list[bytes | None] = []
        append = values.append
        for _ in range(count):
            if pos + 4 > size:
                raise _bad_data_row("message body is truncated")
            (length,) = _INT32_UNPACK(body, pos)
            pos += 4
            if length < 0:
                if length != -1:
                    raise _bad_data_row(f"negative value length {length}")
                append(None)
                continue
            end = pos + length
            if end > size:
                raise _bad_data_row("message body is truncated")
            append(body[pos:end])
            pos = end
        if pos != size:
            raise _bad_data_row(f"{size - pos} unexpected trailing bytes")
        return cls(tuple(values))


def _bad_data_row(detail: str) -> ProtocolError:
    return ProtocolError(PROTOCOL_VIOLATION, f"invalid DataRow message: {detail}")


@dataclass(frozen=True, slots=True)
class CommandComplete(Message):
    """'C': a statement finished; the tag is e.g. 'SELECT 5', 'INSERT 0 1', 'BEGIN'."""

    type_code: ClassVar[bytes] = b"C"
    tag: str

    def encode_body(self) -> bytes:
        return wire.cstring(self.tag)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "CommandComplete")
        tag = reader.cstring()
        reader.finish()
        return cls(tag)


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(EmptyMessage):
    """'I': stands in for CommandComplete when the query string was empty."""

    type_code: ClassVar[bytes] = b"I"


@dataclass(frozen=True, slots=True)
class _ReportFields(Message):
    """Layout and accessors shared by ErrorResponse and NoticeResponse: single-letter field codes to text."""

    fields: dict[str, str]

    @property
    def severity(self) -> str:
        """Non-localized severity ('V', PostgreSQL >= 9.6) when present, else the localized 'S'."""
        return self.fields.get("V") or self.fields.get("S", "")

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def detail(self) -> str | None:
        return self.fields.get("D")

    @property
    def hint(self) -> str | None:
        return self.fields.get("H")

    def encode_body(self) -> bytes:
        parts: list[bytes] = []
        for code, value in self.fields.items():
            if len(code) != 1 or code == "\x00":
                raise ValueError(f"field code must be one non-NUL character, got {code!r}")
            parts += (code.encode("latin-1"), wire.cstring(value))
        parts.append(b"\x00")
        return b"".join(parts)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        # Values are decoded leniently: a translated message in a non-UTF-8 server locale (possible
        # before client_encoding is settled) must not turn an upstream error into a protocol failure.
        reader = wire.Reader(body, cls.__name__)
        fields: dict[str, str] = {}
        while code := reader.uint8():
            key = chr(code)  # unknown codes are kept: the documentation says to ignore, not reject, them
            if key in fields:
                raise reader.error(f"duplicate field {key!r}")
            fields[key] = reader.lenient_cstring()
        reader.finish()
        return cls(fields)


@dataclass(frozen=True, slots=True)
class ErrorResponse(_ReportFields):
    """'E': an error; ``fields`` maps codes (S V C M D H P p q W s t c d n F L R) to text."""

    type_code: ClassVar[bytes] = b"E"

    @property
    def is_fatal(self) -> bool:
        """FATAL and PANIC end the session, whatever state it was in."""
        return self.severity in FATAL_SEVERITIES


@dataclass(frozen=True, slots=True)
class NoticeResponse(_ReportFields):
    """'N': a warning or notice, same field layout as ErrorResponse; may arrive at any time."""

    type_code: ClassVar[bytes] = b"N"


@dataclass(frozen=True, slots=True)
class ParseComplete(EmptyMessage):
    """'1': answer to Parse."""

    type_code: ClassVar[bytes] = b"1"


@dataclass(frozen=True, slots=True)
class BindComplete(EmptyMessage):
    """'2': answer to Bind."""

    type_code: ClassVar[bytes] = b"2"


@dataclass(frozen=True, slots=True)
class CloseComplete(EmptyMessage):
    """'3': answer to Close."""

    type_code: ClassVar[bytes] = b"3"


@dataclass(frozen=True, slots=True)
class NoData(EmptyMessage):
    """'n': Describe of something that returns no rows."""

    type_code: ClassVar[bytes] = b"n"


@dataclass(frozen=True, slots=True)
class PortalSuspended(EmptyMessage):
    """'s': Execute hit its row limit; the portal can be executed again for more."""

    type_code: ClassVar[bytes] = b"s"


@dataclass(frozen=True, slots=True)
class ParameterDescription(Message):
    """'t': parameter type OIDs of a prepared statement (answer to Describe 'S')."""

    type_code: ClassVar[bytes] = b"t"
    type_oids: tuple[int, ...]

    def encode_body(self) -> bytes:
        count = wire.uint16(len(self.type_oids), "parameter count")
        return count + b"".join(wire.uint32(oid, "type OID") for oid in self.type_oids)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "ParameterDescription")
        type_oids = tuple(reader.uint32() for _ in range(reader.uint16()))
        reader.finish()
        return cls(type_oids)


@dataclass(frozen=True, slots=True)
class _CopyResponse(Message):
    """Shared layout of the three COPY start messages: overall format (0 text, 1 binary), then per column."""

    format: int
    column_formats: tuple[int, ...] = ()

    def encode_body(self) -> bytes:
        return b"".join(
            (
                wire.uint8(self.format, "copy format"),
                wire.uint16(len(self.column_formats), "column count"),
                *(wire.int16(code, "format code") for code in self.column_formats),
            )
        )

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, cls.__name__)
        overall = reader.uint8()
        column_formats = tuple(reader.int16() for _ in range(reader.uint16()))
        reader.finish()
        return cls(overall, column_formats)


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    """'G': the server is ready for COPY FROM STDIN data."""

    type_code: ClassVar[bytes] = b"G"


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    """'H': COPY TO STDOUT data follows."""

    type_code: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    """'W': streaming replication copy in both directions (the gateway refuses replication)."""

    type_code: ClassVar[bytes] = b"W"


@dataclass(frozen=True, slots=True)
class NotificationResponse(Message):
    """'A': a NOTIFY delivered to this session; can arrive at any time."""

    type_code: ClassVar[bytes] = b"A"
    process_id: int
    channel: str
    payload: str = ""

    def encode_body(self) -> bytes:
        return wire.int32(self.process_id, "process id") + wire.cstring(self.channel) + wire.cstring(self.payload)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "NotificationResponse")
        process_id = reader.int32()
        channel = reader.cstring()
        payload = reader.cstring()
        reader.finish()
        return cls(process_id, channel, payload)


@dataclass(frozen=True, slots=True)
class FunctionCallResponse(Message):
    """'V': result of a fast-path FunctionCall (decoded so a stray one is named, not 'unknown type')."""

    type_code: ClassVar[bytes] = b"V"
    value: bytes | None

    def encode_body(self) -> bytes:
        return wire.nullable_bytes(self.value)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "FunctionCallResponse")
        value = reader.nullable_bytes()
        reader.finish()
        return cls(value)


BackendMessage: TypeAlias = (
    AuthenticationMessage
    | ParameterStatus
    | BackendKeyData
    | ReadyForQuery
    | NegotiateProtocolVersion
    | RowDescription
    | DataRow
    | CommandComplete
    | EmptyQueryResponse
    | ErrorResponse
    | NoticeResponse
    | ParseComplete
    | BindComplete
    | CloseComplete
    | NoData
    | PortalSuspended
    | ParameterDescription
    | CopyInResponse
    | CopyOutResponse
    | CopyBothResponse
    | CopyData
    | CopyDone
    | NotificationResponse
    | FunctionCallResponse
)

BACKEND_DECODERS: Final[dict[int, Callable[[bytes], BackendMessage]]] = {
    ord("R"): _decode_authentication,
    **{
        cls.type_code[0]: cls.decode_body
        for cls in (
            ParameterStatus,
            BackendKeyData,
            ReadyForQuery,
            NegotiateProtocolVersion,
            RowDescription,
            DataRow,
            CommandComplete,
            EmptyQueryResponse,
            ErrorResponse,
            NoticeResponse,
            ParseComplete,
            BindComplete,
            CloseComplete,
            NoData,
            PortalSuspended,
            ParameterDescription,
            CopyInResponse,
            CopyOutResponse,
            CopyBothResponse,
            CopyData,
            CopyDone,
            NotificationResponse,
            FunctionCallResponse,
        )
    },
}
"""Type byte -> body decoder for everything a server sends."""


def decode_backend_body(type_code: int, body: bytes) -> BackendMessage:
    """Decode the body of a backend message."""
    decoder = BACKEND_DECODERS.get(type_code)
    if decoder is None:
        raise ProtocolError(PROTOCOL_VIOLATION, f"invalid backend message type {bytes((type_code,))!r}")
    return decoder(body)
