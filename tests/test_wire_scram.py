"""The SCRAM-SHA-256 server against an independent client (scramp) and against libpq's empty user name."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
import scramp

from gateway.wire.scram_server import ScramFailure, ScramServer
from identity.scram import make_verifier, parse_verifier

TOKEN = "pga_correct-token"


def libpq_style_client_final(token: str, client_first_bare: str, server_first: str, gs2: str = "n,,") -> str:
    """What libpq computes (RFC 5802), written out independently of the server code."""
    attributes = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", token.encode(), base64.b64decode(attributes["s"]), int(attributes["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c={base64.b64encode(gs2.encode()).decode()},r={attributes['r']}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(stored_key, auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}"


def test_verifier_round_trip_and_never_contains_the_token() -> None:
    text = make_verifier(TOKEN)
    assert text.startswith("SCRAM-SHA-256$4096:") and TOKEN not in text
    assert len(parse_verifier(text).stored_key) == 32
    with pytest.raises(ValueError):
        parse_verifier("md5abcdef")


def test_exchange_with_scramp_client() -> None:
    server = ScramServer(parse_verifier(make_verifier(TOKEN)))
    client = scramp.ScramClient(["SCRAM-SHA-256"], "agent", TOKEN)
    client.set_server_first(server.server_first(client.get_client_first()))
    client.set_server_final(server.server_final(client.get_client_final()))  # scramp verifies the server signature


def test_exchange_with_empty_user_name_like_libpq() -> None:
    server = ScramServer(parse_verifier(make_verifier(TOKEN)))
    bare = "n=,r=fyko+d2lbbFgONRv9qkxdawL"
    server_first = server.server_first("n,," + bare)
    assert server.server_final(libpq_style_client_final(TOKEN, bare, server_first)).startswith("v=")


@pytest.mark.parametrize("token", ["pga_wrong-token", ""])
def test_wrong_token_fails(token: str) -> None:
    server = ScramServer(parse_verifier(make_verifier(TOKEN)))
    bare = "n=,r=abcdefghijklmnop"
    server_first = server.server_first("n,," + bare)
    with pytest.raises(ScramFailure, match="password authentication failed"):
        server.server_final(libpq_style_client_final(token, bare, server_first))


def test_unknown_user_fails_the_same_way_even_with_a_right_looking_proof() -> None:
    server = ScramServer(None)
    bare = "n=,r=abcdefghijklmnop"
    server_first = server.server_first("n,," + bare)
    with pytest.raises(ScramFailure, match="password authentication failed"):
        server.server_final(libpq_style_client_final(TOKEN, bare, server_first))


@pytest.mark.parametrize(
    "client_first",
    [
        "p=tls-server-end-point,,n=,r=abc",
        "n,a=admin,n=,r=abc",
        "n,,r=abc",
        "n,,n=,r=",
        "garbage",
        "n,,n=,r=abc,m=ext",
    ],
)
def test_malformed_or_unsupported_client_first(client_first: str) -> None:
    with pytest.raises(ScramFailure):
        ScramServer(parse_verifier(make_verifier(TOKEN))).server_first(client_first)


def test_tampered_nonce_or_binding_fails() -> None:
    server = ScramServer(parse_verifier(make_verifier(TOKEN)))
    bare = "n=,r=abcdefghijklmnop"
    server_first = server.server_first("n,," + bare)
    final = libpq_style_client_final(TOKEN, bare, server_first)
    with pytest.raises(ScramFailure):
        ScramServer(parse_verifier(make_verifier(TOKEN))).server_final(final)  # out of order
    with pytest.raises(ScramFailure, match="binding"):
        server.server_final(final.replace("c=biws", "c=eSws"))
    with pytest.raises(ScramFailure, match="nonce"):
        server.server_final(final.replace("r=abc", "r=xyz"))


def test_client_that_could_bind_but_was_not_offered_plus_is_accepted() -> None:
    """libpq over TLS sends gs2 flag 'y' when the server offers only SCRAM-SHA-256."""
    server = ScramServer(parse_verifier(make_verifier(TOKEN)))
    bare = "n=,r=abcdefghijklmnop"
    server_first = server.server_first("y,," + bare)
    final = libpq_style_client_final(TOKEN, bare, server_first, gs2="y,,")
    assert server.server_final(final).startswith("v=")
