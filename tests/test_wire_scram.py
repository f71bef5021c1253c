"""The SCRAM-SHA-256(-PLUS) server against RFC 7677's vector, an independent client (scramp), libpq's empty user
name, and the channel binding rules PostgreSQL applies (RFC 5802 section 6, RFC 5929 tls-server-end-point)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac

import pytest
import scramp
import scramp.core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from gateway.wire.scram_server import (
    MECHANISM,
    MECHANISM_PLUS,
    ScramFailure,
    ScramServer,
    tls_server_end_point,
)
from identity.scram import Verifier, make_verifier, parse_verifier

TOKEN = "pga_correct-token"


def libpq_style_client_final(
    token: str, client_first_bare: str, server_first: str, gs2: str = "n,,", cbind_data: bytes = b""
) -> str:
    """What libpq computes (RFC 5802), written out independently of the server code."""
    attributes = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", token.encode(), base64.b64decode(attributes["s"]), int(attributes["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c={base64.b64encode(gs2.encode() + cbind_data).decode()},r={attributes['r']}"
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


# --- RFC 7677 section 3: the published SCRAM-SHA-256 exchange, byte for byte ------------------------------------


def rfc7677_verifier() -> Verifier:
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return Verifier(4096, salt, hashlib.sha256(client_key).digest(), hmac.digest(salted, b"Server Key", "sha256"))


def test_rfc7677_vector() -> None:
    server = ScramServer(rfc7677_verifier(), nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    assert server.mechanisms == (MECHANISM,)
    assert (
        server.server_first("n,,n=user,r=rOprNGfwEbeRWgbNEkqO", MECHANISM)
        == "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert (
        server.server_final(
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        )
        == "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    )


# --- tls-server-end-point (RFC 5929 section 4.1) ---------------------------------------------------------------

# A fixed certificate signed with ecdsa-with-SHA384; the expected binding is `openssl x509 -outform DER |
# openssl dgst -sha384`, computed outside this code base.
VECTOR_CERTIFICATE = """-----BEGIN CERTIFICATE-----
MIIBgTCCASagAwIBAgIBATAKBggqhkjOPQQDAzAeMRwwGgYDVQQDDBNwaGlnYXRl
IHRlc3QgdmVjdG9yMCAXDTI2MTIwNzE0MjYwNloYDzIxMjYxMTEzMTQyNjA2WjAe
MRwwGgYDVQQDDBNwaGlnYXRlIHRlc3QgdmVjdG9yMFkwEwYHKoZIzj0CAQYIKoZI
zj0DAQcDQgAES8m+wcqV5QyIpRTzkVQ483xizOsUCvtN9SiN4WNeSQ+nJ2eJSyWM
R7E7yEwU8ngRFu+Bmo+wmqihJcnv0mQwJqNTMFEwHQYDVR0OBBYEFH4MTbjlyCJb
BjSe11jiczH/tiF/MB8GA1UdIwQYMBaAFH4MTbjlyCJbBjSe11jiczH/tiF/MA8G
A1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwMDSQAwRgIhAKjhZ3JGw1EtCHFKzBdI
RTrXOuZRE6bbuNm0e/3rBHpmAiEAwfPoxWMdu8PvnPG02s2pdBDQUvjE30OiuIh1
SBUzEwY=
-----END CERTIFICATE-----
"""
VECTOR_BINDING = bytes.fromhex(
    "b11a37e6821541dd672b26409acea1b761bef34143712b6838c8d6a101a3fde45057257f104d883473a012c995e97973"
)


# Signed with ecdsa-with-SHA1 (which cryptography no longer signs with): SHA-1 is replaced by SHA-256, the
# expectation is `openssl x509 -outform DER | openssl dgst -sha256`.
SHA1_CERTIFICATE = """-----BEGIN CERTIFICATE-----
MIIBXzCCAQegAwIBAgIBATAJBgcqhkjOPQQBMA8xDTALBgNVBAMMBHNoYTEwIBcN
MjYxMjA3MTQyNjU5WhgPMjEyNjExMTMxNDI2NTlaMA8xDTALBgNVBAMMBHNoYTEw
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATCLALXNALDldOXNhCGh+0BckTCj48Z
BJDlGADFFwfI5rxAmx4H1AQ1CcOOAou+FxfEiHAxrsLydGvVG35AAS+ao1MwUTAd
BgNVHQ4EFgQUUD1esf5QJdfMkc9VI19/5ied6GswHwYDVR0jBBgwFoAUUD1esf5Q
JdfMkc9VI19/5ied6GswDwYDVR0TAQH/BAUwAwEB/zAJBgcqhkjOPQQBA0cAMEQC
IDX6p6tm2NExB9/ReK1MQCXvefT8cmozDj7z24hkeJZ8AiAkJqyMS/h6TdECg3n7
QVJYeAnVTx8FQ45Lsp1hlqCpVw==
-----END CERTIFICATE-----
"""
SHA1_BINDING = bytes.fromhex("37c4bcf127b9206e8b4cace98bec62c40d0de32ebe009b4076b217dfb376cb7e")


def der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("pem", "binding"), [(VECTOR_CERTIFICATE, VECTOR_BINDING), (SHA1_CERTIFICATE, SHA1_BINDING)], ids=["sha384", "sha1"]
)
def test_end_point_of_the_vector_certificates(pem: str, binding: bytes) -> None:
    assert tls_server_end_point(der(pem)) == binding
    assert bytes(scramp.core.CBindData.from_der(der(pem))) == binding  # scramp's own reading (asn1crypto)


def self_signed(key, algorithm) -> bytes:  # type: ignore[no-untyped-def]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "end point")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [
        (hashes.SHA224(), "sha224"),
        (hashes.SHA256(), "sha256"),
        (hashes.SHA384(), "sha384"),
        (hashes.SHA512(), "sha512"),
    ],
)
def test_end_point_hash_follows_the_signature_algorithm(algorithm, digest) -> None:  # type: ignore[no-untyped-def]
    for key in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1())):
        der = self_signed(key, algorithm)
        binding = tls_server_end_point(der)
        assert binding == hashlib.new(digest, der).digest()
        assert binding == bytes(scramp.core.CBindData.from_der(der))  # scramp's own reading (asn1crypto)


def test_end_point_is_undefined_for_ed25519() -> None:
    """No single hash in the signature: no binding, so the server does not offer PLUS (PostgreSQL refuses too)."""
    assert tls_server_end_point(self_signed(ed25519.Ed25519PrivateKey.generate(), None)) is None


# --- SCRAM-SHA-256-PLUS ------------------------------------------------------------------------------------------


def plus_server(nonce: str | None = None) -> ScramServer:
    return ScramServer(parse_verifier(make_verifier(TOKEN)), nonce=nonce, channel_binding=VECTOR_BINDING)


def test_over_tls_both_mechanisms_are_offered_plus_first() -> None:
    assert plus_server().mechanisms == (MECHANISM_PLUS, MECHANISM)


def test_plus_exchange_byte_for_byte() -> None:
    server = ScramServer(rfc7677_verifier(), nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", channel_binding=VECTOR_BINDING)
    bare = "n=,r=rOprNGfwEbeRWgbNEkqO"
    server_first = server.server_first("p=tls-server-end-point,," + bare, MECHANISM_PLUS)
    assert server_first == "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    final = libpq_style_client_final("pencil", bare, server_first, "p=tls-server-end-point,,", VECTOR_BINDING)
    # cbind-input = gs2 header + cbind-data: the certificate's SHA-384, appended to the header's bytes.
    expected_c = base64.b64encode(b"p=tls-server-end-point,," + VECTOR_BINDING).decode()
    assert final.startswith(f"c={expected_c},r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=")
    server_final = server.server_final(final)
    # The server signature, worked out independently: HMAC(ServerKey, client-first-bare,server-first,final-bare).
    without_proof = final.rpartition(",p=")[0]
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    signature = hmac.digest(server_key, f"{bare},{server_first},{without_proof}".encode(), "sha256")
    assert server_final == "v=" + base64.b64encode(signature).decode()


def test_plus_exchange_with_scramp_client() -> None:
    server = plus_server()
    client = scramp.ScramClient(
        [MECHANISM_PLUS], "agent", TOKEN, channel_binding=("tls-server-end-point", VECTOR_BINDING)
    )
    assert client.mechanism_name == MECHANISM_PLUS
    client.set_server_first(server.server_first(client.get_client_first(), MECHANISM_PLUS))
    client.set_server_final(server.server_final(client.get_client_final()))


def test_plus_with_another_certificates_binding_fails() -> None:
    """A man in the middle terminates TLS with its own certificate: the client binds to that one."""
    server = plus_server()
    bare = "n=,r=abcdefghijklmnop"
    server_first = server.server_first("p=tls-server-end-point,," + bare, MECHANISM_PLUS)
    other = hashlib.sha256(b"the interceptor's certificate").digest()
    with pytest.raises(ScramFailure, match="channel binding data mismatch"):
        server.server_final(libpq_style_client_final(TOKEN, bare, server_first, "p=tls-server-end-point,,", other))


def test_plus_binding_must_repeat_the_header_it_announced() -> None:
    server = plus_server()
    bare = "n=,r=abcdefghijklmnop"
    server_first = server.server_first("p=tls-server-end-point,," + bare, MECHANISM_PLUS)
    final = libpq_style_client_final(TOKEN, bare, server_first, "n,,", VECTOR_BINDING)
    with pytest.raises(ScramFailure, match="channel binding data mismatch"):
        server.server_final(final)


def test_client_that_can_bind_but_thinks_the_server_cannot_is_refused_when_plus_was_offered() -> None:
    """'y' over TLS: PLUS was offered, so someone took it off the list on the way (a downgrade)."""
    with pytest.raises(ScramFailure, match="downgrade"):
        plus_server().server_first("y,,n=,r=abcdefghijklmnop", MECHANISM)


def test_client_that_does_not_bind_may_use_plain_scram_over_tls() -> None:
    """libpq's channel_binding=disable sends 'n' and SCRAM-SHA-256."""
    server = plus_server()
    bare = "n=,r=abcdefghijklmnop"
    server_first = server.server_first("n,," + bare, MECHANISM)
    assert server.server_final(libpq_style_client_final(TOKEN, bare, server_first)).startswith("v=")


@pytest.mark.parametrize(
    ("client_first", "mechanism", "reason"),
    [
        ("p=tls-server-end-point,,n=,r=abc", MECHANISM, "sent channel binding data"),
        ("n,,n=,r=abc", MECHANISM_PLUS, "sent no channel binding data"),
        ("y,,n=,r=abc", MECHANISM_PLUS, "sent no channel binding data"),
        ("p=tls-unique,,n=,r=abc", MECHANISM_PLUS, "unsupported SCRAM channel binding type"),
        ("p=tls-server-end-point,a=admin,n=,r=abc", MECHANISM_PLUS, "authorization identity"),
        ("p=tls-server-end-point,,n=,r=abc", "SCRAM-SHA-1-PLUS", "unsupported SASL mechanism"),
    ],
)
def test_plus_negotiation_errors(client_first: str, mechanism: str, reason: str) -> None:
    with pytest.raises(ScramFailure, match=reason):
        plus_server().server_first(client_first, mechanism)


def test_plus_is_refused_when_it_was_not_offered() -> None:
    """Without TLS there is nothing to bind to: SCRAM-SHA-256-PLUS was not in the list."""
    with pytest.raises(ScramFailure, match="unsupported SASL mechanism"):
        ScramServer(parse_verifier(make_verifier(TOKEN))).server_first(
            "p=tls-server-end-point,,n=,r=abc", MECHANISM_PLUS
        )


def test_client_final_attributes_in_order() -> None:
    server = ScramServer(parse_verifier(make_verifier(TOKEN)))
    bare = "n=,r=abcdefghijklmnop"
    server_first = server.server_first("n,," + bare)
    c, r, p = libpq_style_client_final(TOKEN, bare, server_first).split(",")
    with pytest.raises(ScramFailure, match="malformed"):
        server.server_final(f"{r},{c},{p}")
