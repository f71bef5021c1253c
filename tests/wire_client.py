"""A raw PostgreSQL protocol client for tests: signs in with SCRAM-SHA-256, then sends any frontend message.

Real drivers hide the message sequence a test needs to control (a reused statement name, Execute of a cursor
portal, Flush without Sync). This client sends exactly what a test builds from gateway.pgwire.frontend and
returns the decoded backend messages. Every read is bounded: a gateway that hangs fails the test
(``WireTimeout``) instead of stalling the suite.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Self, TypeVar

import scramp

from gateway.pgwire import sasl
from gateway.pgwire.backend import (
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    BackendMessage,
    DataRow,
    ErrorResponse,
    ParameterStatus,
    ReadyForQuery,
)
from gateway.pgwire.base import Message
from gateway.pgwire.frontend import Query, StartupMessage, Sync, Terminate
from gateway.pgwire.parser import BackendParser

DEFAULT_TIMEOUT = 5.0
M = TypeVar("M")


class WireTimeout(AssertionError):
    """The expected reply did not arrive in time; ``received`` holds what did."""

    def __init__(self, what: str, received: list[BackendMessage]) -> None:
        super().__init__(f"timed out waiting for {what}; received {[type(m).__name__ for m in received]}: {received}")
        self.received = received


class WireClosed(AssertionError):
    """The gateway closed the connection before the expected reply; ``received`` holds what came first."""

    def __init__(self, what: str, received: list[BackendMessage]) -> None:
        super().__init__(f"connection closed while waiting for {what}; received {received}")
        self.received = received


class WireClient:
    """One signed-in protocol session with the gateway (or any PostgreSQL server that offers SCRAM)."""

    def __init__(
        self,
        port: int,
        user: str,
        password: str,
        database: str = "clinic",
        *,
        host: str = "127.0.0.1",
        timeout: float = DEFAULT_TIMEOUT,
        options: str = "",
    ) -> None:
        self.timeout = timeout
        self.parser = BackendParser()
        self.parameters: dict[str, str] = {}
        self.backend_key: tuple[int, bytes] | None = None
        self.closed = False
        self.sock = socket.create_connection((host, port), timeout=timeout)
        try:
            parameters = {"user": user, "database": database, "client_encoding": "UTF8"}
            if options:
                parameters["options"] = options
            self._sign_in(StartupMessage(parameters=parameters), user, password)
        except BaseException:
            self.sock.close()
            raise

    # ------------------------------------------------------------------------------------------ sign-in

    def _sign_in(self, startup: StartupMessage, user: str, password: str) -> None:
        self.send(startup)
        scram: scramp.ScramClient | None = None
        while True:
            message = self.next_message("start-up")
            if isinstance(message, AuthenticationSASL):
                scram = scramp.ScramClient(list(message.mechanisms), user, password)
                first = scram.get_client_first().encode()
                self.send(sasl.sasl_initial_response(scram.mechanism_name, first))
            elif isinstance(message, AuthenticationSASLContinue):
                assert scram is not None
                scram.set_server_first(message.data.decode())
                self.send(sasl.sasl_response(scram.get_client_final().encode()))
            elif isinstance(message, AuthenticationSASLFinal):
                assert scram is not None
                scram.set_server_final(message.data.decode())
            elif isinstance(message, AuthenticationOk):
                continue
            elif isinstance(message, ParameterStatus):
                self.parameters[message.name] = message.value
            elif isinstance(message, BackendKeyData):
                self.backend_key = (message.process_id, message.secret_key)
            elif isinstance(message, ReadyForQuery):
                return
            elif isinstance(message, ErrorResponse):
                raise AssertionError(f"sign-in refused: {message.fields}")

    # ------------------------------------------------------------------------------------------ sending

    def send(self, *messages: Message) -> None:
        """Send the messages in one write (a pipelined batch, as drivers send them)."""
        self.sock.sendall(b"".join(message.encode() for message in messages))

    # ------------------------------------------------------------------------------------------ reading

    def next_message(self, what: str = "a message", timeout: float | None = None) -> BackendMessage:
        """The next backend message; WireTimeout or WireClosed if none arrives in time."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (message := self.parser.next_message()) is None:
            self._receive(deadline, what, [])
        return message

    def read_until(
        self, done: Callable[[BackendMessage], bool], what: str, timeout: float | None = None
    ) -> list[BackendMessage]:
        """Messages up to and including the first for which ``done`` is true."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        received: list[BackendMessage] = []
        while True:
            while (message := self.parser.next_message()) is not None:
                received.append(message)
                if done(message):
                    return received
            self._receive(deadline, what, received)

    def read_until_ready(self, timeout: float | None = None) -> list[BackendMessage]:
        """Messages up to and including the next ReadyForQuery."""
        return self.read_until(lambda m: isinstance(m, ReadyForQuery), "ReadyForQuery", timeout)

    def read_available(self, wait: float = 1.0) -> list[BackendMessage]:
        """Whatever arrives within ``wait`` seconds (no error when nothing does)."""
        deadline = time.monotonic() + wait
        received: list[BackendMessage] = []
        while time.monotonic() < deadline:
            received.extend(self.parser.messages())
            try:
                self._receive(deadline, "", received)
            except (WireTimeout, WireClosed):
                break
        received.extend(self.parser.messages())
        return received

    def _receive(self, deadline: float, what: str, received: list[BackendMessage]) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WireTimeout(what, received)
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise WireTimeout(what, received) from None
        except ConnectionError:
            chunk = b""
        if not chunk:
            self.closed = True
            raise WireClosed(what, received)
        self.parser.feed(chunk)

    # ------------------------------------------------------------------------------------------ shortcuts

    def query(self, sql: str, timeout: float | None = None) -> list[BackendMessage]:
        """A simple Query and everything up to its ReadyForQuery."""
        self.send(Query(sql))
        return self.read_until_ready(timeout)

    def batch(self, *messages: Message, timeout: float | None = None) -> list[BackendMessage]:
        """An extended-protocol batch ended by Sync; everything up to its ReadyForQuery."""
        self.send(*messages, Sync())
        return self.read_until_ready(timeout)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                self.send(Terminate())
        self.sock.close()
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ------------------------------------------------------------------------------------------ decoding helpers


def errors(messages: Iterable[BackendMessage]) -> list[ErrorResponse]:
    return [m for m in messages if isinstance(m, ErrorResponse)]


def sqlstates(messages: Iterable[BackendMessage]) -> list[str]:
    return [m.sqlstate for m in errors(messages)]


def rows(messages: Iterable[BackendMessage]) -> list[tuple[str | None, ...]]:
    """DataRow values as text (binary values decoded leniently: tests only look for leaked substrings)."""
    return [
        tuple(None if v is None else v.decode("utf-8", "replace") for v in m.values)
        for m in messages
        if isinstance(m, DataRow)
    ]


def of_type(messages: Iterable[BackendMessage], kind: type[M]) -> list[M]:
    return [m for m in messages if isinstance(m, kind)]


def wire_text(messages: Iterable[BackendMessage]) -> str:
    """Everything the client was sent, as one searchable string (rows, errors, notices, descriptions)."""
    return "\n".join(repr(m) for m in messages) + "\n" + "\n".join(repr(r) for r in rows(messages))
