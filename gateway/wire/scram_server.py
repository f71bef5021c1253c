"""The server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677), sans-IO, as PostgreSQL speaks it.

Why not scramp's server: libpq sends an empty SCRAM user name (``n=,r=...``; PostgreSQL takes the user from the
startup packet), which scramp refuses, and rewriting the message would break the client's proof. The exchange is
short; every step checks everything it is given (cf. the immudb advisory in ANCHORS.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from identity.scram import Verifier

MECHANISM = "SCRAM-SHA-256"


class ScramFailure(Exception):
    """Authentication failed; the message is safe to log (it never contains the proof or keys)."""


def _attributes(message: str) -> list[tuple[str, str]]:
    parts = []
    for item in message.split(","):
        key, sep, value = item.partition("=")
        if not sep or len(key) != 1:
            raise ScramFailure("malformed SCRAM message")
        parts.append((key, value))
    return parts


class ScramServer:
    """One exchange: ``server_first(client_first)`` then ``server_final(client_final)``."""

    def __init__(self, verifier: Verifier | None, nonce: str | None = None) -> None:
        # With no verifier (unknown user) we still run the exchange against a random one, so a client cannot
        # tell "no such agent" from "wrong token" by how the server answers.
        self._verifier = verifier or Verifier(
            4096, secrets.token_bytes(16), secrets.token_bytes(32), secrets.token_bytes(32)
        )
        self._known = verifier is not None
        self._server_nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self._client_first_bare = ""
        self._server_first = ""
        self._gs2_header = ""
        self._nonce = ""

    def server_first(self, client_first: str) -> str:
        # "n": no channel binding. "y": the client could bind but we did not offer SCRAM-SHA-256-PLUS, which is
        # the honest answer from libpq over TLS (RFC 5802 section 6). "p=...": binding we never offered.
        flag = client_first[:2]
        if flag not in ("n,", "y,"):
            raise ScramFailure("channel binding is not supported")
        gs2, sep, bare = client_first[2:].partition(",")
        if not sep or gs2 != "":  # authzid is not supported
            raise ScramFailure("malformed SCRAM client-first message")
        attributes = _attributes(bare)
        if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r" or not attributes[1][1]:
            raise ScramFailure("malformed SCRAM client-first message")
        if any(key == "m" for key, _ in attributes):
            raise ScramFailure("unsupported mandatory SCRAM extension")
        self._gs2_header = flag + ","
        self._client_first_bare = bare
        self._nonce = attributes[1][1] + self._server_nonce
        salt = base64.b64encode(self._verifier.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self._verifier.iterations}"
        return self._server_first

    def server_final(self, client_final: str) -> str:
        if not self._server_first:
            raise ScramFailure("SCRAM messages out of order")
        without_proof, sep, proof_attribute = client_final.rpartition(",p=")
        if not sep:
            raise ScramFailure("malformed SCRAM client-final message")
        attributes = dict(_attributes(without_proof))
        if attributes.get("c") != base64.b64encode(self._gs2_header.encode()).decode():
            raise ScramFailure("SCRAM channel binding data mismatch")
        if attributes.get("r") != self._nonce:
            raise ScramFailure("SCRAM nonce mismatch")
        try:
            proof = base64.b64decode(proof_attribute, validate=True)
        except ValueError:
            raise ScramFailure("malformed SCRAM proof") from None
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        client_signature = hmac.digest(self._verifier.stored_key, auth_message, "sha256")
        if len(proof) != len(client_signature):
            raise ScramFailure("password authentication failed")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if not (self._known and hmac.compare_digest(hashlib.sha256(client_key).digest(), self._verifier.stored_key)):
            raise ScramFailure("password authentication failed")
        server_signature = hmac.digest(self._verifier.server_key, auth_message, "sha256")
        return "v=" + base64.b64encode(server_signature).decode()
