"""Frontend (client -> server) messages: the startup-phase packets and the regular typed messages.

Startup-phase packets have no type byte; they are told apart by the Int32 code that opens the body
(a protocol version, or one of the special request codes). Everything after StartupMessage has a type byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal, Self, TypeAlias, cast

from gateway.pgwire import primitives as wire
from gateway.pgwire.base import EmptyMessage, Message
from gateway.pgwire.common import CopyData, CopyDone
from gateway.pgwire.errors import FEATURE_NOT_SUPPORTED, PROTOCOL_VIOLATION, ProtocolError

PROTOCOL_3_0: Final = 3 << 16
PROTOCOL_3_2: Final = (3 << 16) | 2
CANCEL_REQUEST_CODE: Final = (1234 << 16) | 5678
SSL_REQUEST_CODE: Final = (1234 << 16) | 5679
GSSENC_REQUEST_CODE: Final = (1234 << 16) | 5680
MIN_SECRET_KEY_LENGTH: Final = 4
MAX_SECRET_KEY_LENGTH: Final = 256
"""Protocol 3.0 keys are 4 bytes; 3.2 allows up to 256, so accept the whole range both ways."""

TargetKind: TypeAlias = Literal["S", "P"]
"""Describe/Close target: 'S' prepared statement, 'P' portal."""


def check_secret_key(key: bytes) -> None:
    """Encoding-side check shared with BackendKeyData."""
    if not MIN_SECRET_KEY_LENGTH <= len(key) <= MAX_SECRET_KEY_LENGTH:
        raise ValueError(f"secret key must be {MIN_SECRET_KEY_LENGTH}..{MAX_SECRET_KEY_LENGTH} bytes, got {len(key)}")


def read_secret_key(reader: wire.Reader) -> bytes:
    key = reader.rest()
    if not MIN_SECRET_KEY_LENGTH <= len(key) <= MAX_SECRET_KEY_LENGTH:
        raise reader.error(f"secret key of {len(key)} bytes")
    return key


# --- startup phase -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage(Message):
    """The real startup packet: protocol version and name/value parameters (user, database, options...)."""

    protocol_version: int = PROTOCOL_3_0
    parameters: dict[str, str] = field(default_factory=dict)

    def encode_body(self) -> bytes:
        parts = [wire.uint32(self.protocol_version, "protocol version")]
        for name, value in self.parameters.items():
            if not name:
                raise ValueError("startup parameter names must not be empty (an empty name ends the list)")
            parts += (wire.cstring(name), wire.cstring(value))
        parts.append(b"\x00")
        return b"".join(parts)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "startup packet")
        version = reader.uint32()
        parameters: dict[str, str] = {}
        while name := reader.cstring():
            # A repeated name (say, two "user" entries) could be read one way here and another upstream.
            if name in parameters:
                raise reader.error(f"duplicate parameter {name!r}")
            parameters[name] = reader.cstring()
        reader.finish()
        return cls(version, parameters)


class _CodeOnlyRequest(Message):
    """A startup-phase packet that is nothing but its request code."""

    __slots__ = ()
    request_code: ClassVar[int]

    def encode_body(self) -> bytes:
        return wire.uint32(self.request_code)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, cls.__name__)
        if reader.uint32() != cls.request_code:
            raise reader.error("wrong request code")
        reader.finish()
        return cls()


@dataclass(frozen=True, slots=True)
class SSLRequest(_CodeOnlyRequest):
    """Asks for TLS. The answer is one unframed byte, 'S' or 'N', then the client sends a startup packet
    again. Bytes that arrived after this request were sent in clear text: see FrontendParser.begin_encryption.
    """

    request_code: ClassVar[int] = SSL_REQUEST_CODE


@dataclass(frozen=True, slots=True)
class GSSENCRequest(_CodeOnlyRequest):
    """Asks for GSSAPI encryption; answered by one unframed byte, 'G' or 'N'."""

    request_code: ClassVar[int] = GSSENC_REQUEST_CODE


@dataclass(frozen=True, slots=True)
class CancelRequest(Message):
    """Sent on a fresh connection to cancel the query running on another; the connection then closes."""

    process_id: int
    secret_key: bytes

    def encode_body(self) -> bytes:
        check_secret_key(self.secret_key)
        return wire.uint32(CANCEL_REQUEST_CODE) + wire.int32(self.process_id, "process id") + self.secret_key

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "CancelRequest")
        if reader.uint32() != CANCEL_REQUEST_CODE:
            raise reader.error("wrong request code")
        process_id = reader.int32()
        return cls(process_id, read_secret_key(reader))


StartupPacket: TypeAlias = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def decode_startup_body(body: bytes) -> StartupPacket:
    """Decode a startup-phase packet body (everything after its length word)."""
    code = wire.Reader(body, "startup packet").uint32()
    if code == SSL_REQUEST_CODE:
        return SSLRequest.decode_body(body)
    if code == GSSENC_REQUEST_CODE:
        return GSSENCRequest.decode_body(body)
    if code == CANCEL_REQUEST_CODE:
        return CancelRequest.decode_body(body)
    if code >> 16 == 3:
        return StartupMessage.decode_body(body)
    # Protocol 2 (or a future major) has a different layout; name it so the client knows why.
    raise ProtocolError(FEATURE_NOT_SUPPORTED, f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")


# --- regular messages ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PasswordMessage(Message):
    """'p': raw payload. Whether it is a password, a SASLInitialResponse, a SASLResponse or a GSS token
    depends on which Authentication request preceded it, which only the connection knows (see sasl.py).
    """

    type_code: ClassVar[bytes] = b"p"
    payload: bytes

    def encode_body(self) -> bytes:
        return self.payload

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        return cls(body)


@dataclass(frozen=True, slots=True)
class Query(Message):
    """'Q': simple query; may hold several statements separated by semicolons."""

    type_code: ClassVar[bytes] = b"Q"
    sql: str

    def encode_body(self) -> bytes:
        return wire.cstring(self.sql)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "Query")
        sql = reader.cstring()
        reader.finish()
        return cls(sql)


@dataclass(frozen=True, slots=True)
class Parse(Message):
    """'P': prepare ``query`` as ``statement`` ('' = unnamed); param type OID 0 means "infer"."""

    type_code: ClassVar[bytes] = b"P"
    statement: str
    query: str
    param_types: tuple[int, ...] = ()

    def encode_body(self) -> bytes:
        return b"".join(
            (
                wire.cstring(self.statement),
                wire.cstring(self.query),
                wire.uint16(len(self.param_types), "parameter type count"),
                *(wire.uint32(oid, "type OID") for oid in self.param_types),
            )
        )

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "Parse")
        statement = reader.cstring()
        query = reader.cstring()
        param_types = tuple(reader.uint32() for _ in range(reader.uint16()))
        reader.finish()
        return cls(statement, query, param_types)


@dataclass(frozen=True, slots=True)
class Bind(Message):
    """'B': bind parameter values to a prepared statement, creating a portal.

    ``param_formats`` has 0 entries (all text), 1 (applies to all) or one per parameter; anything else is
    rejected because a gateway rewriting values must know each value's format without guessing.
    """

    type_code: ClassVar[bytes] = b"B"
    portal: str = ""
    statement: str = ""
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def param_format(self, index: int) -> int:
        """Format code (0 text, 1 binary) that applies to parameter ``index``."""
        if not self.param_formats:
            return 0
        if len(self.param_formats) == 1:
            return self.param_formats[0]
        return self.param_formats[index]

    def encode_body(self) -> bytes:
        if len(self.param_formats) not in (0, 1, len(self.params)):
            raise ValueError(f"{len(self.param_formats)} parameter formats for {len(self.params)} parameters")
        return b"".join(
            (
                wire.cstring(self.portal),
                wire.cstring(self.statement),
                wire.uint16(len(self.param_formats), "parameter format count"),
                *(wire.int16(code, "format code") for code in self.param_formats),
                wire.uint16(len(self.params), "parameter count"),
                *(wire.nullable_bytes(value) for value in self.params),
                wire.uint16(len(self.result_formats), "result format count"),
                *(wire.int16(code, "format code") for code in self.result_formats),
            )
        )

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "Bind")
        portal = reader.cstring()
        statement = reader.cstring()
        param_formats = tuple(reader.int16() for _ in range(reader.uint16()))
        params = tuple(reader.nullable_bytes() for _ in range(reader.uint16()))
        if len(param_formats) not in (0, 1, len(params)):
            raise reader.error(f"{len(param_formats)} parameter formats for {len(params)} parameters")
        result_formats = tuple(reader.int16() for _ in range(reader.uint16()))
        reader.finish()
        return cls(portal, statement, param_formats, params, result_formats)


@dataclass(frozen=True, slots=True)
class _Target(Message):
    """Layout shared by Describe and Close: a kind byte ('S' statement, 'P' portal) and a name."""

    kind: TargetKind
    name: str = ""

    def encode_body(self) -> bytes:
        if self.kind not in ("S", "P"):
            raise ValueError(f"target kind must be 'S' or 'P', got {self.kind!r}")
        return self.kind.encode("ascii") + wire.cstring(self.name)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, cls.__name__)
        kind = chr(reader.uint8())
        if kind not in ("S", "P"):
            raise reader.error(f"unknown target kind {kind!r}")
        name = reader.cstring()
        reader.finish()
        return cls(cast(TargetKind, kind), name)


@dataclass(frozen=True, slots=True)
class Describe(_Target):
    """'D': ask for the parameter/row description of a statement ('S') or portal ('P')."""

    type_code: ClassVar[bytes] = b"D"


@dataclass(frozen=True, slots=True)
class Close(_Target):
    """'C': release a prepared statement ('S') or portal ('P')."""

    type_code: ClassVar[bytes] = b"C"


@dataclass(frozen=True, slots=True)
class Execute(Message):
    """'E': run a portal; ``max_rows`` 0 means no limit (a positive limit can yield PortalSuspended)."""

    type_code: ClassVar[bytes] = b"E"
    portal: str = ""
    max_rows: int = 0

    def encode_body(self) -> bytes:
        return wire.cstring(self.portal) + wire.int32(self.max_rows, "row limit")

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "Execute")
        portal = reader.cstring()
        max_rows = reader.int32()
        reader.finish()
        return cls(portal, max_rows)


@dataclass(frozen=True, slots=True)
class Sync(EmptyMessage):
    """'S': end of an extended-query batch; the server answers ReadyForQuery and ends error skipping."""

    type_code: ClassVar[bytes] = b"S"


@dataclass(frozen=True, slots=True)
class Flush(EmptyMessage):
    """'H': ask the server to send what it has buffered, without ending the batch."""

    type_code: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class Terminate(EmptyMessage):
    """'X': the client is closing the connection."""

    type_code: ClassVar[bytes] = b"X"


@dataclass(frozen=True, slots=True)
class CopyFail(Message):
    """'f': the client aborts COPY FROM STDIN, with a reason."""

    type_code: ClassVar[bytes] = b"f"
    message: str

    def encode_body(self) -> bytes:
        return wire.cstring(self.message)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        reader = wire.Reader(body, "CopyFail")
        message = reader.cstring()
        reader.finish()
        return cls(message)


@dataclass(frozen=True, slots=True)
class FunctionCall(Message):
    """'F': legacy fast-path function call. Kept raw: the gateway refuses it without interpreting it."""

    type_code: ClassVar[bytes] = b"F"
    raw: bytes

    def encode_body(self) -> bytes:
        return self.raw

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        return cls(body)


RegularFrontendMessage: TypeAlias = (
    PasswordMessage
    | Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Sync
    | Flush
    | Close
    | Terminate
    | CopyData
    | CopyDone
    | CopyFail
    | FunctionCall
)
FrontendMessage: TypeAlias = StartupPacket | RegularFrontendMessage

FRONTEND_DECODERS: Final[dict[int, Callable[[bytes], RegularFrontendMessage]]] = {
    cls.type_code[0]: cls.decode_body
    for cls in (
        PasswordMessage,
        Query,
        Parse,
        Bind,
        Describe,
        Execute,
        Sync,
        Flush,
        Close,
        Terminate,
        CopyData,
        CopyDone,
        CopyFail,
        FunctionCall,
    )
}
"""Type byte -> body decoder for messages after the startup phase."""

SMALL_MESSAGE_LIMIT: Final = 10_000
AUTH_TOKEN_LIMIT: Final = 65_535 + 4

FRONTEND_LENGTH_LIMITS: Final[dict[int, int]] = {
    **dict.fromkeys(b"CDEHSXcf", SMALL_MESSAGE_LIMIT),
    ord("p"): AUTH_TOKEN_LIMIT,
}
"""Per-type caps on the length word, tighter than max_message_size, as PostgreSQL applies: a Sync or
Describe never needs more, and passwords/SASL tokens are capped during authentication. This keeps a
client from making us buffer megabytes for a message whose body is tiny by definition."""


def decode_frontend_body(type_code: int, body: bytes) -> RegularFrontendMessage:
    """Decode the body of a typed frontend message."""
    decoder = FRONTEND_DECODERS.get(type_code)
    if decoder is None:
        raise ProtocolError(PROTOCOL_VIOLATION, f"invalid frontend message type {bytes((type_code,))!r}")
    return decoder(body)
