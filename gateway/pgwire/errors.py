"""The one exception type of the protocol core, and the SQLSTATEs it carries.

Everything that can go wrong while reading bytes from a peer is reported as a ``ProtocolError`` with a
SQLSTATE, so the server built on top has exactly one thing to catch and can turn it into a FATAL
ErrorResponse that psql, psycopg and asyncpg display verbatim.
"""

from __future__ import annotations

from typing import Final

PROTOCOL_VIOLATION: Final = "08P01"
"""Malformed or unexpected message: the byte stream cannot be trusted any further."""

PROGRAM_LIMIT_EXCEEDED: Final = "54000"
"""A declared length exceeds a cap; refused before the body is buffered."""

CHARACTER_NOT_IN_REPERTOIRE: Final = "22021"
"""Text that must be UTF-8 (SQL, names, parameters) is not."""

FEATURE_NOT_SUPPORTED: Final = "0A000"
"""A well-formed request for something the protocol core does not speak (protocol 2, GSS auth...)."""


class ProtocolError(Exception):
    """The peer broke the protocol; the connection cannot continue.

    Parsers that raise it enter a failed state and keep raising, because after a framing or content error
    there is no reliable way to find the next message boundary (and a gateway must fail closed).
    """

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(sqlstate, message)
        self.sqlstate = sqlstate
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (SQLSTATE {self.sqlstate})"
