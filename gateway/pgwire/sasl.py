"""Interpreting and building the payload of 'p' messages.

The wire gives every client authentication reply the same type byte, so the parser can only hand over a
raw PasswordMessage. Whoever tracks the authentication exchange knows which request it answers and uses
these helpers to read or build the payload.
"""

from __future__ import annotations

from gateway.pgwire import primitives as wire
from gateway.pgwire.frontend import PasswordMessage


def parse_password(payload: bytes) -> str:
    """Payload answering AuthenticationCleartextPassword / AuthenticationMD5Password."""
    reader = wire.Reader(payload, "PasswordMessage")
    password = reader.cstring()
    reader.finish()
    return password


def password_message(password: str) -> PasswordMessage:
    return PasswordMessage(wire.cstring(password))


def parse_sasl_initial_response(payload: bytes) -> tuple[str, bytes | None]:
    """Payload answering AuthenticationSASL: the chosen mechanism and its initial data (None if absent)."""
    reader = wire.Reader(payload, "SASLInitialResponse")
    mechanism = reader.cstring()
    data = reader.nullable_bytes()
    reader.finish()
    return mechanism, data


def sasl_initial_response(mechanism: str, data: bytes | None) -> PasswordMessage:
    if not mechanism:
        raise ValueError("SASL mechanism name must not be empty")
    return PasswordMessage(wire.cstring(mechanism) + wire.nullable_bytes(data))


def sasl_response(data: bytes) -> PasswordMessage:
    """Answer to AuthenticationSASLContinue: the payload is the mechanism data itself."""
    return PasswordMessage(data)
