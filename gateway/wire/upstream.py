"""The gateway's own connection to the target, as the read-only role, one per client session.

A client session keeps its upstream connection for its whole life, so transactions, prepared statements and
portals behave as they would on a direct connection. The gateway speaks the protocol itself (gateway.pgwire) so
it can forward the client's extended-protocol messages unchanged and rewrite result values on the way back.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import scramp
from psycopg.conninfo import conninfo_to_dict

from gateway.pgwire import sasl
from gateway.pgwire.backend import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    BackendMessage,
    ErrorResponse,
    NoticeResponse,
    ParameterStatus,
    ReadyForQuery,
)
from gateway.pgwire.frontend import CancelRequest, StartupMessage
from gateway.pgwire.parser import BackendParser

READ_SIZE = 64 * 1024
UPSTREAM_MAX_MESSAGE = 1 << 30


class UpstreamError(Exception):
    """The target refused or dropped the gateway's connection."""

    def __init__(self, message: str, sqlstate: str = "08006") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class UpstreamTarget:
    host: str
    port: int
    user: str
    password: str
    dbname: str

    @classmethod
    def from_url(cls, url: str) -> UpstreamTarget:
        params = conninfo_to_dict(url)
        return cls(
            host=str(params.get("host") or "127.0.0.1"),
            port=int(params.get("port") or 5432),
            user=str(params.get("user") or ""),
            password=str(params.get("password") or ""),
            dbname=str(params.get("dbname") or ""),
        )

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A stream pair like ``asyncio.open_connection``'s, whose protocol can divert data (UpstreamProtocol)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = UpstreamProtocol(reader, loop=loop)
        if self.host.startswith("/"):
            transport, _ = await loop.create_unix_connection(lambda: protocol, f"{self.host}/.s.PGSQL.{self.port}")
        else:
            transport, _ = await loop.create_connection(lambda: protocol, self.host, self.port)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class UpstreamProtocol(asyncio.StreamReaderProtocol):
    """Received bytes go to the StreamReader, or to ``divert`` while it is set (the session's fast path,
    gateway.wire.session.WireSession.try_fast_path, which then parses them itself)."""

    divert: Callable[[bytes], None] | None = None

    def data_received(self, data: bytes) -> None:
        if self.divert is not None:
            self.divert(data)
        else:
            super().data_received(data)


@dataclass
class Upstream:
    target: UpstreamTarget
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    # The target is trusted to frame its messages; allow large values (bytea, big text) through.
    parser: BackendParser = field(default_factory=lambda: BackendParser(max_message_size=UPSTREAM_MAX_MESSAGE))
    process_id: int = 0
    secret_key: bytes = b""
    parameters: dict[str, str] = field(default_factory=dict)
    pending: list[bytes] = field(default_factory=list)

    @classmethod
    async def connect(
        cls, target: UpstreamTarget, application_name: str, settings: Mapping[str, str] | None = None
    ) -> Upstream:
        """Connect and sign in as the read-only role. ``settings`` are start-up settings (already judged by
        policy.session_settings); the user, database, application name and UTF8 are the gateway's own. A failed
        sign-in closes the socket (no half-closed connection is left behind) and raises UpstreamError with the
        target's SQLSTATE."""
        try:
            reader, writer = await target.open()
        except OSError as exc:
            raise UpstreamError(f"cannot reach the target database: {exc.strerror or exc}") from None
        upstream = cls(target, reader, writer)
        parameters = dict(settings or {})
        parameters.update(
            {
                "user": target.user,
                "database": target.dbname,
                "application_name": application_name,
                "client_encoding": "UTF8",
            }
        )
        upstream.send(StartupMessage(parameters=parameters).encode())
        try:
            await upstream._authenticate()
        except UpstreamError:
            upstream.close()
            raise
        except Exception as exc:  # a reset, a malformed message, a server that failed SCRAM's proof
            upstream.close()
            raise UpstreamError(f"sign-in to the target database failed ({type(exc).__name__})") from None
        except BaseException:  # cancelled (a shutdown, the sign-in timeout): still no socket left behind
            upstream.close()
            raise
        return upstream

    @property
    def protocol(self) -> UpstreamProtocol:
        protocol = self.writer.transport.get_protocol()
        assert isinstance(protocol, UpstreamProtocol)
        return protocol

    def pause_reading(self) -> None:
        cast(asyncio.ReadTransport, self.writer.transport).pause_reading()

    def resume_reading(self) -> None:
        cast(asyncio.ReadTransport, self.writer.transport).resume_reading()

    def send(self, data: bytes) -> None:
        """Buffer: consecutive messages leave in one write (one syscall) at the next flush."""
        self.pending.append(data)

    def flush(self) -> None:
        if self.pending:
            self.writer.write(b"".join(self.pending))
            self.pending.clear()

    async def drain(self) -> None:
        self.flush()
        await self.writer.drain()

    async def next_message(self, before_wait: Callable[[], None] | None = None) -> BackendMessage:
        """The next message; ``before_wait`` runs before blocking on the socket (to flush our own output)."""
        while (message := self.parser.next_message()) is None:
            await self._receive(before_wait)
        return message

    async def next_frame(self, before_wait: Callable[[], None] | None = None) -> tuple[int, bytes]:
        """The next message undecoded: (type code, whole frame). For relaying results byte for byte."""
        while (framed := self.parser.next_frame()) is None:
            await self._receive(before_wait)
        return framed

    async def _receive(self, before_wait: Callable[[], None] | None) -> None:
        if before_wait is not None:
            before_wait()
        data = await self.reader.read(READ_SIZE)
        if not data:
            raise UpstreamError("the target database closed the connection")
        self.parser.feed(data)

    async def _authenticate(self) -> None:
        scram: scramp.ScramClient | None = None
        while True:
            message = await self.next_message(before_wait=self.flush)
            if isinstance(message, AuthenticationOk):
                continue
            if isinstance(message, AuthenticationCleartextPassword):
                self.send(sasl.password_message(self.target.password).encode())
            elif isinstance(message, AuthenticationMD5Password):
                inner = hashlib.md5((self.target.password + self.target.user).encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + message.salt).hexdigest()
                self.send(sasl.password_message("md5" + outer).encode())
            elif isinstance(message, AuthenticationSASL):
                scram = scramp.ScramClient(
                    list(message.mechanisms), self.target.user or "gateway", self.target.password
                )
                first = scram.get_client_first().encode()
                self.send(sasl.sasl_initial_response(scram.mechanism_name, first).encode())
            elif isinstance(message, AuthenticationSASLContinue) and scram is not None:
                scram.set_server_first(message.data.decode())
                self.send(sasl.sasl_response(scram.get_client_final().encode()).encode())
            elif isinstance(message, AuthenticationSASLFinal) and scram is not None:
                scram.set_server_final(message.data.decode())  # verifies the server knew the password too
            elif isinstance(message, ParameterStatus):
                self.parameters[message.name] = message.value
            elif isinstance(message, BackendKeyData):
                self.process_id, self.secret_key = message.process_id, message.secret_key
            elif isinstance(message, NoticeResponse):
                continue
            elif isinstance(message, ReadyForQuery):
                return
            elif isinstance(message, ErrorResponse):
                raise UpstreamError(message.fields.get("M", "authentication failed"), message.fields.get("C", "28000"))
            else:
                raise UpstreamError(f"unexpected {type(message).__name__} during upstream start-up")
            await self.drain()

    async def cancel(self) -> None:
        """Ask the target to cancel whatever this connection is running (a separate, short connection)."""
        try:
            _, writer = await self.target.open()
        except OSError:
            return
        writer.write(CancelRequest(self.process_id, self.secret_key).encode())
        await writer.drain()
        writer.close()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
