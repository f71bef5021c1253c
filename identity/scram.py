"""SCRAM-SHA-256 verifiers for agent tokens (what the wire gateway checks), in PostgreSQL's own format.

``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64 parts), the same text ``pg_authid`` holds.
The verifier cannot be turned back into the token, and cannot be replayed as a password. Tokens are 256-bit
random strings, so a modest iteration count costs an attacker nothing they could use.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import scramp

MECHANISM = "SCRAM-SHA-256"
ITERATIONS = 4096


@dataclass(frozen=True)
class Verifier:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


def make_verifier(token: str) -> str:
    salt, stored_key, server_key, iterations = scramp.ScramMechanism(MECHANISM).make_auth_info(
        token, iteration_count=ITERATIONS
    )
    b64 = base64.b64encode
    return f"{MECHANISM}${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def parse_verifier(text: str) -> Verifier:
    """Raises ValueError for anything but a well-formed SCRAM-SHA-256 verifier."""
    mechanism, _, rest = text.partition("$")
    if mechanism != MECHANISM:
        raise ValueError("not a SCRAM-SHA-256 verifier")
    iterations_salt, _, keys = rest.partition("$")
    iterations, _, salt = iterations_salt.partition(":")
    stored_key, _, server_key = keys.partition(":")
    decoded = [base64.b64decode(part, validate=True) for part in (salt, stored_key, server_key)]
    if int(iterations) < 1 or len(decoded[1]) != 32 or len(decoded[2]) != 32:
        raise ValueError("malformed SCRAM-SHA-256 verifier")
    return Verifier(int(iterations), *decoded)
