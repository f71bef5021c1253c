"""The server side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802 / RFC 7677), sans-IO, as PostgreSQL speaks it.

Why not scramp's server: libpq sends an empty SCRAM user name (``n=,r=...``; PostgreSQL takes the user from the
startup packet), which scramp refuses, and rewriting the message would break the client's proof. The exchange is
short; every step checks everything it is given (cf. the immudb advisory in ANCHORS.md).

Channel binding is ``tls-server-end-point`` (RFC 5929 section 4.1), the only type PostgreSQL offers: the hash of
the server's own certificate, which a man in the middle holding another certificate cannot reproduce. Over TLS
the server offers SCRAM-SHA-256-PLUS first and SCRAM-SHA-256 second, like PostgreSQL; without TLS only
SCRAM-SHA-256, and a client that insists on binding (libpq's ``channel_binding=require``) gives up on its side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

from identity.scram import Verifier

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
CHANNEL_BINDING_TYPE = "tls-server-end-point"


class ScramFailure(Exception):
    """Authentication failed; the message is safe to log (it never contains the proof or keys)."""


def tls_server_end_point(certificate_der: bytes) -> bytes | None:
    """The ``tls-server-end-point`` channel binding data of a certificate (RFC 5929 section 4.1).

    The certificate's hash with the hash function of its signature algorithm, SHA-256 when that is MD5 or SHA-1.
    None when the signature names no single hash (Ed25519, Ed448): the binding is undefined, PLUS is not offered.
    """
    certificate = x509.load_der_x509_certificate(certificate_der)
    try:
        algorithm = certificate.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None
    if algorithm is None:
        return None
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate_der)
    return digest.finalize()


def _attributes(message: str) -> list[tuple[str, str]]:
    parts = []
    for item in message.split(","):
        key, sep, value = item.partition("=")
        if not sep or len(key) != 1:
            raise ScramFailure("malformed SCRAM message")
        parts.append((key, value))
    return parts


class ScramServer:
    """One exchange: ``server_first(client_first, mechanism)`` then ``server_final(client_final)``.

    ``channel_binding`` is the ``tls-server-end-point`` data of the certificate the client's TLS connection was
    made with; given, the server offers SCRAM-SHA-256-PLUS (``mechanisms``) and holds the client to it.
    """

    def __init__(
        self, verifier: Verifier | None, nonce: str | None = None, channel_binding: bytes | None = None
    ) -> None:
        # With no verifier (unknown user) we still run the exchange against a random one, so a client cannot
        # tell "no such agent" from "wrong token" by how the server answers.
        self._verifier = verifier or Verifier(
            4096, secrets.token_bytes(16), secrets.token_bytes(32), secrets.token_bytes(32)
        )
        self._known = verifier is not None
        self._server_nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self._channel_binding = channel_binding
        self._client_first_bare = ""
        self._server_first = ""
        self._cbind_input = b""
        self._nonce = ""

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """What AuthenticationSASL lists, in order of preference."""
        return (MECHANISM_PLUS, MECHANISM) if self._channel_binding is not None else (MECHANISM,)

    def server_first(self, client_first: str, mechanism: str = MECHANISM) -> str:
        if mechanism not in self.mechanisms:
            raise ScramFailure(f"unsupported SASL mechanism {mechanism!r}")
        flag, sep, rest = client_first.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not (sep and sep2):
            raise ScramFailure("malformed SCRAM client-first message")
        # The gs2 channel binding flag (RFC 5802 section 6), checked against what the server offered.
        if flag.startswith("p="):
            if mechanism != MECHANISM_PLUS:
                raise ScramFailure("client selected SCRAM-SHA-256 but sent channel binding data")
            if flag[2:] != CHANNEL_BINDING_TYPE:
                raise ScramFailure(f"unsupported SCRAM channel binding type {flag[2:]!r}")
            cbind_data = self._channel_binding or b""
        elif flag in ("n", "y"):
            if mechanism == MECHANISM_PLUS:
                raise ScramFailure("client selected SCRAM-SHA-256-PLUS but sent no channel binding data")
            # "y": the client could bind but believes the server cannot. Over TLS we offered PLUS, so someone
            # removed it from the list on the way (a downgrade); without TLS "y" is libpq's honest answer.
            if flag == "y" and self._channel_binding is not None:
                raise ScramFailure("SCRAM channel binding downgrade: the client thinks the server does not bind")
            cbind_data = b""
        else:
            raise ScramFailure("malformed SCRAM client-first message")
        if authzid != "":
            raise ScramFailure("SCRAM authorization identity is not supported")
        attributes = _attributes(bare)
        if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r" or not attributes[1][1]:
            raise ScramFailure("malformed SCRAM client-first message")
        if any(key == "m" for key, _ in attributes):
            raise ScramFailure("unsupported mandatory SCRAM extension")
        self._cbind_input = f"{flag},{authzid},".encode() + cbind_data
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
        attributes = _attributes(without_proof)
        if len(attributes) < 2 or attributes[0][0] != "c" or attributes[1][0] != "r":
            raise ScramFailure("malformed SCRAM client-final message")
        try:
            cbind_input = base64.b64decode(attributes[0][1], validate=True)
        except ValueError:
            raise ScramFailure("malformed SCRAM channel binding data") from None
        if not hmac.compare_digest(cbind_input, self._cbind_input):
            raise ScramFailure("SCRAM channel binding data mismatch")
        if attributes[1][1] != self._nonce:
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
