"""The PostgreSQL wire listener.

Until the wire front (issue 4) lands, the listener speaks just enough of protocol v3 to refuse clearly: it
declines TLS/GSS negotiation and answers every startup with a FATAL ErrorResponse (SQLSTATE 0A000) that points
clients to the HTTP API, so a psql user sees a real message instead of a hung socket.
"""

from __future__ import annotations

import asyncio
import struct

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_STARTUP_LENGTH = 10_000


def error_response(severity: str, sqlstate: str, message: str) -> bytes:
    fields = b"".join(
        code + value.encode() + b"\x00"
        for code, value in ((b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", message))
    )
    body = fields + b"\x00"
    return b"E" + struct.pack("!I", len(body) + 4) + body


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            header = await asyncio.wait_for(reader.readexactly(8), timeout=30)
            length, code = struct.unpack("!II", header)
            if length < 8 or length > MAX_STARTUP_LENGTH:
                writer.write(error_response("FATAL", "08P01", "invalid startup packet length"))
                break
            await reader.readexactly(length - 8)
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                writer.write(b"N")
                await writer.drain()
                continue
            if code == CANCEL_REQUEST:
                break
            writer.write(
                error_response(
                    "FATAL",
                    "0A000",
                    "the PostgreSQL wire front is not enabled in this build; use the HTTP API (/api/v1/queries)",
                )
            )
            break
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def start(host: str, port: int) -> asyncio.base_events.Server:
    return await asyncio.start_server(_serve_connection, host, port)
