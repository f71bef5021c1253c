"""Sans-IO PostgreSQL frontend/backend protocol v3 (3.0 and 3.2): messages, codecs, parsers, session states.

Nothing here touches sockets, asyncio or Django. A server feeds received bytes to a parser, pulls typed
messages out, checks them against the session state machine and writes ``encode(message)`` back.

Modules, one job each:
    errors       ProtocolError and the SQLSTATEs it carries
    primitives   field readers/writers (Int16/32, C strings, nullable byte strings)
    base         Message base class and framing
    frontend     client -> server messages (startup phase and typed)
    backend      server -> client messages
    common       CopyData/CopyDone, shared by both directions
    parser       incremental FrontendParser / BackendParser with size caps
    codec        encode() and one-shot decode_frontend() / decode_backend()
    sasl         payloads of 'p' messages (password, SASL initial response)
    notices      error_response() / notice_response() and field codes
    states       server-side session state machine as transition tables
    transaction  transaction status tracking for synthesized ReadyForQuery
"""

from gateway.pgwire.backend import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationMessage,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    BackendMessage,
    BindComplete,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    EmptyQueryResponse,
    ErrorResponse,
    FieldDescription,
    FunctionCallResponse,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    ParseComplete,
    PortalSuspended,
    ReadyForQuery,
    RowDescription,
    TransactionStatus,
    decode_backend_body,
)
from gateway.pgwire.base import Message
from gateway.pgwire.codec import decode_backend, decode_frontend, encode
from gateway.pgwire.common import CopyData, CopyDone
from gateway.pgwire.errors import (
    CHARACTER_NOT_IN_REPERTOIRE,
    FEATURE_NOT_SUPPORTED,
    PROGRAM_LIMIT_EXCEEDED,
    PROTOCOL_VIOLATION,
    ProtocolError,
)
from gateway.pgwire.frontend import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_3_0,
    PROTOCOL_3_2,
    SSL_REQUEST_CODE,
    Bind,
    CancelRequest,
    Close,
    CopyFail,
    Describe,
    Execute,
    Flush,
    FrontendMessage,
    FunctionCall,
    GSSENCRequest,
    Parse,
    PasswordMessage,
    Query,
    RegularFrontendMessage,
    SSLRequest,
    StartupMessage,
    StartupPacket,
    Sync,
    Terminate,
    decode_frontend_body,
    decode_startup_body,
)
from gateway.pgwire.notices import ErrorField, error_response, notice_response, protocol_error_response
from gateway.pgwire.parser import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_STARTUP_PACKET_SIZE,
    BackendParser,
    FrontendParser,
)
from gateway.pgwire.sasl import (
    parse_password,
    parse_sasl_initial_response,
    password_message,
    sasl_initial_response,
    sasl_response,
)
from gateway.pgwire.states import ServerConnection, State
from gateway.pgwire.transaction import TransactionTracker

__all__ = [
    "CANCEL_REQUEST_CODE",
    "CHARACTER_NOT_IN_REPERTOIRE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "FEATURE_NOT_SUPPORTED",
    "GSSENC_REQUEST_CODE",
    "MAX_STARTUP_PACKET_SIZE",
    "PROGRAM_LIMIT_EXCEEDED",
    "PROTOCOL_3_0",
    "PROTOCOL_3_2",
    "PROTOCOL_VIOLATION",
    "SSL_REQUEST_CODE",
    "AuthenticationCleartextPassword",
    "AuthenticationMD5Password",
    "AuthenticationMessage",
    "AuthenticationOk",
    "AuthenticationSASL",
    "AuthenticationSASLContinue",
    "AuthenticationSASLFinal",
    "BackendKeyData",
    "BackendMessage",
    "BackendParser",
    "Bind",
    "BindComplete",
    "CancelRequest",
    "Close",
    "CloseComplete",
    "CommandComplete",
    "CopyBothResponse",
    "CopyData",
    "CopyDone",
    "CopyFail",
    "CopyInResponse",
    "CopyOutResponse",
    "DataRow",
    "Describe",
    "EmptyQueryResponse",
    "ErrorField",
    "ErrorResponse",
    "Execute",
    "FieldDescription",
    "Flush",
    "FrontendMessage",
    "FrontendParser",
    "FunctionCall",
    "FunctionCallResponse",
    "GSSENCRequest",
    "Message",
    "NegotiateProtocolVersion",
    "NoData",
    "NoticeResponse",
    "NotificationResponse",
    "ParameterDescription",
    "ParameterStatus",
    "Parse",
    "ParseComplete",
    "PasswordMessage",
    "PortalSuspended",
    "ProtocolError",
    "Query",
    "ReadyForQuery",
    "RegularFrontendMessage",
    "RowDescription",
    "SSLRequest",
    "ServerConnection",
    "StartupMessage",
    "StartupPacket",
    "State",
    "Sync",
    "Terminate",
    "TransactionStatus",
    "TransactionTracker",
    "decode_backend",
    "decode_backend_body",
    "decode_frontend",
    "decode_frontend_body",
    "decode_startup_body",
    "encode",
    "error_response",
    "notice_response",
    "parse_password",
    "parse_sasl_initial_response",
    "password_message",
    "protocol_error_response",
    "sasl_initial_response",
    "sasl_response",
]
