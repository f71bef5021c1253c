"""The server side of a client connection, as a transition table.

Two tables say which message may happen in which state and what state follows: ``ON_RECEIVE`` for
messages from the client and ``ON_SEND`` for messages to it (whether the gateway writes them or relays
them from upstream). A message type missing from a state's row is not allowed there. ``IGNORED`` lists
client messages the protocol says to accept and discard (COPY leftovers after a failed COPY, everything
until Sync after an extended-protocol error); the server must not forward or act on those.

The model is sequential, like PostgreSQL's own loop: after a Query or a Sync, the server reads nothing
more from the client (the bytes wait in the parser) until it has sent ReadyForQuery. Within an extended
batch it may read ahead, which is what a relay forwarding Parse/Bind/Execute before their answers needs.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from gateway.pgwire.backend import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    BackendMessage,
    BindComplete,
    CloseComplete,
    CommandComplete,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    EmptyQueryResponse,
    ErrorResponse,
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
)
from gateway.pgwire.common import CopyData, CopyDone
from gateway.pgwire.errors import PROTOCOL_VIOLATION, ProtocolError
from gateway.pgwire.frontend import (
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
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
)


class State(Enum):
    """Where a client connection is, seen from the server."""

    AWAITING_STARTUP = "nothing received yet; expecting a startup packet"
    AWAITING_STARTUP_SSL_TRIED = "SSLRequest answered; expecting the startup packet (GSSENCRequest still allowed)"
    AWAITING_STARTUP_GSS_TRIED = "GSSENCRequest answered; expecting the startup packet (SSLRequest still allowed)"
    AWAITING_STARTUP_BOTH_TRIED = "both encryption requests answered; only the startup packet remains"
    AUTHENTICATING = "StartupMessage received; the server's move in the authentication exchange"
    AWAITING_PASSWORD = "the server asked for a credential; expecting one PasswordMessage"
    AUTHENTICATED = "AuthenticationOk sent; ParameterStatus/BackendKeyData until the first ReadyForQuery"
    READY = "idle between queries; ReadyForQuery sent"
    SIMPLE_QUERY = "a Query (or FunctionCall) is in flight; ends with ReadyForQuery"
    COPY_IN = "COPY FROM STDIN started by a Query; expecting CopyData until CopyDone/CopyFail"
    COPY_OUT = "COPY TO STDOUT started by a Query; the server sends CopyData until CopyDone"
    EXTENDED = "extended-protocol messages received since the last Sync"
    EXTENDED_ERROR = "an error ended the extended batch; client messages are discarded until Sync"
    SYNCING = "Sync received; results of the batch then ReadyForQuery are due"
    EXTENDED_COPY_IN = "COPY FROM STDIN started by Execute; a pending Sync was swallowed, a new one follows"
    EXTENDED_COPY_OUT = "COPY TO STDOUT started by Execute before Sync was received"
    SYNCING_COPY_OUT = "COPY TO STDOUT started by Execute after Sync was received"
    CLOSED = "Terminate, CancelRequest or a fatal error; nothing more may happen"


class FatalError:
    """Table key standing for an ErrorResponse of severity FATAL or PANIC, which ends any session."""


S = State
_STARTUP_STATES: Final = (
    S.AWAITING_STARTUP,
    S.AWAITING_STARTUP_SSL_TRIED,
    S.AWAITING_STARTUP_GSS_TRIED,
    S.AWAITING_STARTUP_BOTH_TRIED,
)
_EXTENDED_MESSAGES: Final = (Parse, Bind, Describe, Execute, Close, Flush)
_COPY_MESSAGES: Final = (CopyData, CopyDone, CopyFail)
_ASYNC: Final = (NoticeResponse, ParameterStatus, NotificationResponse)
_RESULTS: Final = (RowDescription, DataRow, CommandComplete, EmptyQueryResponse)
_EXTENDED_RESULTS: Final = (
    *_RESULTS,
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    ParameterDescription,
    PortalSuspended,
)


def _to(state: State, *types: type) -> dict[type, State]:
    return dict.fromkeys(types, state)


def _startup_row(ssl: State | None, gss: State | None) -> dict[type, State]:
    row = {StartupMessage: S.AUTHENTICATING, CancelRequest: S.CLOSED}
    if ssl is not None:
        row[SSLRequest] = ssl
    if gss is not None:
        row[GSSENCRequest] = gss
    return row


ON_RECEIVE: Final[dict[State, dict[type, State]]] = {
    S.AWAITING_STARTUP: _startup_row(S.AWAITING_STARTUP_SSL_TRIED, S.AWAITING_STARTUP_GSS_TRIED),
    S.AWAITING_STARTUP_SSL_TRIED: _startup_row(None, S.AWAITING_STARTUP_BOTH_TRIED),
    S.AWAITING_STARTUP_GSS_TRIED: _startup_row(S.AWAITING_STARTUP_BOTH_TRIED, None),
    S.AWAITING_STARTUP_BOTH_TRIED: _startup_row(None, None),
    S.AUTHENTICATING: {Terminate: S.CLOSED},
    S.AWAITING_PASSWORD: {PasswordMessage: S.AUTHENTICATING, Terminate: S.CLOSED},
    S.AUTHENTICATED: {Terminate: S.CLOSED},
    S.READY: {
        Query: S.SIMPLE_QUERY,
        FunctionCall: S.SIMPLE_QUERY,
        **_to(S.EXTENDED, *_EXTENDED_MESSAGES),
        Flush: S.READY,  # nothing to flush, and no batch begins (psycopg sends one after a pipeline's Sync)
        Sync: S.SYNCING,
        **_to(S.READY, *_COPY_MESSAGES),
        Terminate: S.CLOSED,
    },
    S.SIMPLE_QUERY: {**_to(S.SIMPLE_QUERY, *_COPY_MESSAGES), Terminate: S.CLOSED},
    S.COPY_IN: {
        CopyData: S.COPY_IN,
        CopyDone: S.SIMPLE_QUERY,
        CopyFail: S.SIMPLE_QUERY,
        **_to(S.COPY_IN, Flush, Sync),
        Terminate: S.CLOSED,
    },
    S.COPY_OUT: {Terminate: S.CLOSED},
    S.EXTENDED: {
        **_to(S.EXTENDED, *_EXTENDED_MESSAGES),
        # PostgreSQL takes a simple Query in the middle of a batch once it has answered what came before it; a
        # relay that reads ahead must let those answers out first (gateway.wire.session does).
        Query: S.SIMPLE_QUERY,
        FunctionCall: S.SIMPLE_QUERY,
        Sync: S.SYNCING,
        **_to(S.EXTENDED, *_COPY_MESSAGES),
        Terminate: S.CLOSED,
    },
    S.EXTENDED_ERROR: {
        **_to(S.EXTENDED_ERROR, Query, FunctionCall, PasswordMessage, *_EXTENDED_MESSAGES, *_COPY_MESSAGES),
        Sync: S.SYNCING,
        Terminate: S.CLOSED,
    },
    S.SYNCING: {Terminate: S.CLOSED},
    S.EXTENDED_COPY_IN: {
        CopyData: S.EXTENDED_COPY_IN,
        CopyDone: S.EXTENDED,
        CopyFail: S.EXTENDED,
        **_to(S.EXTENDED_COPY_IN, Flush, Sync),
        Terminate: S.CLOSED,
    },
    S.EXTENDED_COPY_OUT: {
        **_to(S.EXTENDED_COPY_OUT, *_EXTENDED_MESSAGES),
        Sync: S.SYNCING_COPY_OUT,
        Terminate: S.CLOSED,
    },
    S.SYNCING_COPY_OUT: {Terminate: S.CLOSED},
    S.CLOSED: {},
}
"""(state, client message type) -> next state."""

IGNORED: Final[dict[State, frozenset[type]]] = {
    S.READY: frozenset(_COPY_MESSAGES),
    S.SIMPLE_QUERY: frozenset(_COPY_MESSAGES),
    S.EXTENDED: frozenset(_COPY_MESSAGES),
    S.EXTENDED_ERROR: frozenset(ON_RECEIVE[S.EXTENDED_ERROR]) - {Sync, Terminate},
    S.COPY_IN: frozenset({Flush, Sync}),
    S.EXTENDED_COPY_IN: frozenset({Flush, Sync}),
}
"""Client messages accepted but to be discarded: COPY leftovers that were in flight when a COPY failed,
Flush/Sync during COPY IN (the protocol says to ignore them), anything before Sync after an error."""

_AUTH_REQUESTS: Final = (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationSASL,
    AuthenticationSASLContinue,
)

ON_SEND: Final[dict[State, dict[type, State]]] = {
    **{state: {ErrorResponse: S.CLOSED} for state in _STARTUP_STATES},
    S.AUTHENTICATING: {
        **_to(S.AWAITING_PASSWORD, *_AUTH_REQUESTS),
        AuthenticationSASLFinal: S.AUTHENTICATING,
        AuthenticationOk: S.AUTHENTICATED,
        NegotiateProtocolVersion: S.AUTHENTICATING,
        NoticeResponse: S.AUTHENTICATING,
        ErrorResponse: S.CLOSED,
    },
    S.AWAITING_PASSWORD: {ErrorResponse: S.CLOSED},
    S.AUTHENTICATED: {
        **_to(S.AUTHENTICATED, ParameterStatus, BackendKeyData, NoticeResponse),
        ReadyForQuery: S.READY,
        ErrorResponse: S.CLOSED,
    },
    S.READY: _to(S.READY, *_ASYNC),
    S.SIMPLE_QUERY: {
        **_to(S.SIMPLE_QUERY, *_RESULTS, *_ASYNC, FunctionCallResponse, ErrorResponse),
        CopyInResponse: S.COPY_IN,
        CopyOutResponse: S.COPY_OUT,
        ReadyForQuery: S.READY,
    },
    S.COPY_IN: {**_to(S.COPY_IN, *_ASYNC), ErrorResponse: S.SIMPLE_QUERY},
    S.COPY_OUT: {
        **_to(S.COPY_OUT, *_ASYNC, CopyData),
        CopyDone: S.SIMPLE_QUERY,
        ErrorResponse: S.SIMPLE_QUERY,
    },
    S.EXTENDED: {
        **_to(S.EXTENDED, *_EXTENDED_RESULTS, *_ASYNC),
        ErrorResponse: S.EXTENDED_ERROR,
        CopyInResponse: S.EXTENDED_COPY_IN,
        CopyOutResponse: S.EXTENDED_COPY_OUT,
    },
    S.EXTENDED_ERROR: _to(S.EXTENDED_ERROR, *_ASYNC),
    S.SYNCING: {
        **_to(S.SYNCING, *_EXTENDED_RESULTS, *_ASYNC, ErrorResponse),
        CopyInResponse: S.EXTENDED_COPY_IN,
        CopyOutResponse: S.SYNCING_COPY_OUT,
        ReadyForQuery: S.READY,
    },
    S.EXTENDED_COPY_IN: {**_to(S.EXTENDED_COPY_IN, *_ASYNC), ErrorResponse: S.EXTENDED_ERROR},
    S.EXTENDED_COPY_OUT: {
        **_to(S.EXTENDED_COPY_OUT, *_ASYNC, CopyData),
        CopyDone: S.EXTENDED,
        ErrorResponse: S.EXTENDED_ERROR,
    },
    S.SYNCING_COPY_OUT: {
        **_to(S.SYNCING_COPY_OUT, *_ASYNC, CopyData),
        CopyDone: S.SYNCING,
        ErrorResponse: S.SYNCING,
    },
    S.CLOSED: {},
}
"""(state, server message type) -> next state; a FATAL/PANIC ErrorResponse closes from any state."""

for _state in State:
    if _state is not S.CLOSED:
        ON_SEND[_state][FatalError] = S.CLOSED
del _state


# Message type code -> class, for relays that pass frames on undecoded: every message type the table knows, but
# the authentication requests ('R' covers several classes, and the table is used after sign-in).
BACKEND_TYPE_BY_CODE: Final[dict[int, type]] = {
    code[0]: kind for row in ON_SEND.values() for kind in row if (code := getattr(kind, "type_code", b"R")) != b"R"
}


class ServerConnection:
    """Applies the tables to one client connection.

    On a disallowed message the state is left unchanged and ProtocolError is raised, so the server can
    still send the FATAL ErrorResponse (allowed in every state but CLOSED) before closing.
    """

    __slots__ = ("ignored", "state")

    def __init__(self, state: State = State.AWAITING_STARTUP) -> None:
        self.state = state
        self.ignored = False
        """True when the last received message must be discarded rather than acted on or forwarded."""

    def receive(self, message: FrontendMessage) -> State:
        """Validate a message from the client and advance; returns the new state."""
        kind = type(message)
        next_state = ON_RECEIVE[self.state].get(kind)
        if next_state is None:
            raise ProtocolError(PROTOCOL_VIOLATION, f"unexpected {kind.__name__} message ({self.state.value})")
        self.ignored = kind in IGNORED.get(self.state, ())
        self.state = next_state
        return next_state

    def send(self, message: BackendMessage) -> State:
        """Validate a message about to go to the client and advance; returns the new state."""
        kind: type = type(message)
        if isinstance(message, ErrorResponse) and message.is_fatal:
            kind = FatalError
        next_state = ON_SEND[self.state].get(kind)
        if next_state is None:
            raise ProtocolError(
                PROTOCOL_VIOLATION, f"cannot send {type(message).__name__} to the client ({self.state.value})"
            )
        self.state = next_state
        return next_state

    def send_frame(self, code: int, *, fatal: bool = False) -> State:
        """``send`` for a frame relayed undecoded: its type code (and, for an ErrorResponse, its severity)."""
        kind = FatalError if fatal else BACKEND_TYPE_BY_CODE.get(code)
        next_state = ON_SEND[self.state].get(kind) if kind is not None else None
        if next_state is None:
            name = kind.__name__ if kind is not None else repr(bytes((code,)))
            raise ProtocolError(PROTOCOL_VIOLATION, f"cannot send {name} to the client ({self.state.value})")
        self.state = next_state
        return next_state

    def send_frames(self, code: int, count: int) -> State:
        """``send_frame`` for ``count`` frames of one type in a row (a run of DataRows): one transition looked up,
        the rest only when that state does not simply repeat."""
        state = self.send_frame(code)
        if count > 1 and ON_SEND[state].get(BACKEND_TYPE_BY_CODE[code]) is not state:  # known: sent above
            for _ in range(count - 1):
                state = self.send_frame(code)
        return state

    def can_receive(self, kind: type) -> bool:
        return kind in ON_RECEIVE[self.state]

    def can_send(self, kind: type) -> bool:
        return kind in ON_SEND[self.state]
