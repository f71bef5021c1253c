"""TLS on the wire when a certificate is configured (make demo generates a self-signed one): SCRAM-SHA-256-PLUS
channel binding over it (tls-server-end-point, as PostgreSQL), and GATEWAY_REQUIRE_TLS refusing clear text."""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest
import scramp
from django.core.exceptions import ImproperlyConfigured

from audit.models import AuditEvent, EventKind
from demo.tls import ensure_self_signed
from gateway.pgwire.backend import (
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    ErrorResponse,
)
from gateway.pgwire.frontend import SSLRequest, StartupMessage
from gateway.pgwire.parser import BackendParser
from gateway.pgwire.sasl import sasl_initial_response, sasl_response
from gateway.wire.scram_server import MECHANISM, MECHANISM_PLUS
from gateway.wire.server import tls_context
from identity.roles import Role
from tests import services as svc
from tests.factories import make_agent, make_user


@pytest.fixture(scope="module")
def tls_gateway(target, tmp_path_factory):  # type: ignore[no-untyped-def]
    state = tmp_path_factory.mktemp("tls")
    cert, key = ensure_self_signed(state)
    assert oct(key.stat().st_mode)[-3:] == "600"
    service, port = svc.gateway(
        target.read_url,
        state,
        name="tls-gateway",
        extra_env={"GATEWAY_TLS_CERT_FILE": str(cert), "GATEWAY_TLS_KEY_FILE": str(key)},
    )
    yield {"port": port, "cert": cert}
    service.stop()


@pytest.fixture(scope="module")
def tls_only_gateway(target, tmp_path_factory):  # type: ignore[no-untyped-def]
    state = tmp_path_factory.mktemp("tls-only")
    cert, key = ensure_self_signed(state)
    service, port = svc.gateway(
        target.read_url,
        state,
        name="tls-only-gateway",
        extra_env={
            "GATEWAY_TLS_CERT_FILE": str(cert),
            "GATEWAY_TLS_KEY_FILE": str(key),
            "GATEWAY_REQUIRE_TLS": "true",
        },
    )
    yield {"port": port, "cert": cert}
    service.stop()


def agent_url(port: int) -> tuple[str, str, str]:
    """A fresh agent's name, token and URL (no query string) for the gateway on ``port``."""
    agent, token = make_agent(make_user(Role.ENGINEER))
    return agent.name, token, f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{port}/clinic"


def test_sslmode_require_gets_tls_and_verify_full_checks_the_certificate(tls_gateway) -> None:  # type: ignore[no-untyped-def]
    _, _, base = agent_url(tls_gateway["port"])
    with psycopg.connect(base + "?sslmode=require") as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(f"{base}?sslmode=verify-full&sslrootcert={tls_gateway['cert']}") as conn:
        assert conn.pgconn.ssl_in_use


def test_without_a_certificate_the_gateway_declines_tls(services) -> None:  # type: ignore[no-untyped-def]
    _, _, dsn = agent_url(services.gateway_port)
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        psycopg.connect(dsn + "?sslmode=require", connect_timeout=10)
    with psycopg.connect(dsn + "?sslmode=prefer") as conn:
        assert not conn.pgconn.ssl_in_use


# --- SCRAM-SHA-256-PLUS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sslmode", ["require", "prefer", "verify-full"])
def test_libpq_channel_binding_require_signs_in_over_tls(tls_gateway, sslmode: str) -> None:  # type: ignore[no-untyped-def]
    """libpq only completes channel_binding=require after a SCRAM-SHA-256-PLUS exchange the server verified."""
    _, _, base = agent_url(tls_gateway["port"])
    with psycopg.connect(
        f"{base}?sslmode={sslmode}&sslrootcert={tls_gateway['cert']}&channel_binding=require", connect_timeout=10
    ) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_libpq_channel_binding_disable_still_signs_in_over_tls(tls_gateway) -> None:  # type: ignore[no-untyped-def]
    _, _, base = agent_url(tls_gateway["port"])
    with psycopg.connect(f"{base}?sslmode=require&channel_binding=disable", connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_libpq_channel_binding_require_fails_on_the_client_without_tls(tls_gateway, services) -> None:  # type: ignore[no-untyped-def]
    """libpq checks before it sends a proof: with no TLS there is nothing to bind to, whatever the server offers."""
    _, _, base = agent_url(tls_gateway["port"])
    with pytest.raises(psycopg.OperationalError, match="channel binding required, but SSL not in use"):
        psycopg.connect(f"{base}?sslmode=disable&channel_binding=require", connect_timeout=10)
    _, _, plain = agent_url(services.gateway_port)  # no certificate: TLS declined, only SCRAM-SHA-256 offered
    with pytest.raises(psycopg.OperationalError, match="channel binding required, but SSL not in use"):
        psycopg.connect(f"{plain}?sslmode=prefer&channel_binding=require", connect_timeout=10)


class RawClient:
    """Just enough of a PostgreSQL client to send the SCRAM messages libpq would not."""

    def __init__(self, port: int, tls: bool = True) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls:
            sock.sendall(SSLRequest().encode())
            assert sock.recv(1) == b"S"
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock)
        self.sock = sock
        self.parser = BackendParser()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, *messages: object) -> None:
        self.sock.sendall(b"".join(message.encode() for message in messages))  # type: ignore[attr-defined]

    def receive(self) -> object:
        while (message := self.parser.next_message()) is None:
            chunk = self.sock.recv(65536)
            assert chunk, "the gateway closed the connection"
            self.parser.feed(chunk)
        return message

    def start(self, agent_name: str) -> tuple[str, ...]:
        self.send(StartupMessage(parameters={"user": agent_name, "database": "clinic"}))
        offer = self.receive()
        assert isinstance(offer, AuthenticationSASL)
        return offer.mechanisms


def scram_exchange(raw: RawClient, client: scramp.ScramClient) -> object:
    raw.send(sasl_initial_response(client.mechanism_name, client.get_client_first().encode()))
    server_first = raw.receive()
    if not isinstance(server_first, AuthenticationSASLContinue):
        return server_first
    client.set_server_first(server_first.data.decode())
    raw.send(sasl_response(client.get_client_final().encode()))
    return raw.receive()


def audited_failures(agent_name: str) -> list[str]:
    events = AuditEvent.objects.filter(kind=EventKind.AUTH_FAILED, agent_name=agent_name).order_by("id")
    return [event.details.get("reason", "") for event in events]


def test_over_tls_plus_is_offered_first_and_binds_to_the_served_certificate(tls_gateway) -> None:  # type: ignore[no-untyped-def]
    name, token, _ = agent_url(tls_gateway["port"])
    with RawClient(tls_gateway["port"]) as raw:
        assert raw.start(name) == (MECHANISM_PLUS, MECHANISM)
        # scramp hashes the certificate it received (its own tls-server-end-point code, not the gateway's).
        client = scramp.ScramClient([MECHANISM_PLUS], name, token, channel_binding=("tls-server-end-point", raw.sock))
        final = scram_exchange(raw, client)
        assert isinstance(final, AuthenticationSASLFinal)
        client.set_server_final(final.data.decode())  # checks the server signature
        assert isinstance(raw.receive(), AuthenticationOk)


def test_without_tls_only_plain_scram_is_offered(services) -> None:  # type: ignore[no-untyped-def]
    name, _, _ = agent_url(services.gateway_port)
    with RawClient(services.gateway_port, tls=False) as raw:
        assert raw.start(name) == (MECHANISM,)


def test_binding_to_another_certificate_is_refused_and_audited(tls_gateway) -> None:  # type: ignore[no-untyped-def]
    """What a client behind a TLS-terminating interceptor computes: the hash of the interceptor's certificate."""
    name, token, _ = agent_url(tls_gateway["port"])
    with RawClient(tls_gateway["port"]) as raw:
        raw.start(name)
        other = hashlib.sha256(b"the interceptor's certificate").digest()
        client = scramp.ScramClient([MECHANISM_PLUS], name, token, channel_binding=("tls-server-end-point", other))
        refusal = scram_exchange(raw, client)
    assert isinstance(refusal, ErrorResponse) and refusal.fields["C"] == "28P01"
    assert "password authentication failed" in refusal.fields["M"]
    assert audited_failures(name) == ["SCRAM channel binding data mismatch"]


def test_client_that_thinks_the_server_cannot_bind_is_refused_over_tls_and_audited(tls_gateway) -> None:  # type: ignore[no-untyped-def]
    """gs2 flag 'y' when PLUS was offered: the list was tampered with on the way (RFC 5802 section 6)."""
    name, _, _ = agent_url(tls_gateway["port"])
    with RawClient(tls_gateway["port"]) as raw:
        raw.start(name)
        raw.send(sasl_initial_response(MECHANISM, b"y,,n=,r=abcdefghijklmnopqrstuvwx"))
        refusal = raw.receive()
    assert isinstance(refusal, ErrorResponse) and refusal.fields["C"] == "28P01"
    assert refusal.fields["S"] == "FATAL"
    assert len(reasons := audited_failures(name)) == 1 and "downgrade" in reasons[0]


# --- GATEWAY_REQUIRE_TLS -----------------------------------------------------------------------------------------


def test_tls_required_refuses_clear_text_like_a_hostssl_only_server_and_audits_it(tls_only_gateway) -> None:  # type: ignore[no-untyped-def]
    name, _, base = agent_url(tls_only_gateway["port"])
    with pytest.raises(psycopg.OperationalError, match=r"FATAL:  no pg_hba.conf entry .* no encryption"):
        psycopg.connect(base + "?sslmode=disable", connect_timeout=10)
    assert audited_failures(name) == ["TLS required: the client did not ask for encryption"]
    with RawClient(tls_only_gateway["port"], tls=False) as raw:  # refused before any authentication request
        raw.send(StartupMessage(parameters={"user": name, "database": "clinic"}))
        refusal = raw.receive()
    assert isinstance(refusal, ErrorResponse) and (refusal.fields["S"], refusal.fields["C"]) == ("FATAL", "28000")


def test_tls_required_lets_tls_clients_in(tls_only_gateway) -> None:  # type: ignore[no-untyped-def]
    _, _, base = agent_url(tls_only_gateway["port"])
    for query in ("?sslmode=prefer", "?sslmode=require&channel_binding=require"):
        with psycopg.connect(base + query, connect_timeout=10) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.fixture
def tls_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("GATEWAY_TLS_CERT_FILE", "GATEWAY_TLS_KEY_FILE", "GATEWAY_REQUIRE_TLS"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    yield monkeypatch


def test_tls_required_without_a_certificate_refuses_to_start(tls_environment) -> None:  # type: ignore[no-untyped-def]
    tls_environment.setenv("GATEWAY_REQUIRE_TLS", "true")
    with pytest.raises(ImproperlyConfigured, match="GATEWAY_REQUIRE_TLS"):
        tls_context()
    tls_environment.setenv("GATEWAY_REQUIRE_TLS", "maybe")
    with pytest.raises(ImproperlyConfigured, match="not a boolean"):
        tls_context()
    tls_environment.setenv("GATEWAY_REQUIRE_TLS", "false")
    assert tls_context() is None


def test_tls_context_knows_its_certificate_binding(tls_environment, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cert, key = ensure_self_signed(tmp_path)
    tls_environment.setenv("GATEWAY_TLS_CERT_FILE", str(cert))
    tls_environment.setenv("GATEWAY_TLS_KEY_FILE", str(key))
    context = tls_context()
    assert context is not None and not context.required
    # The demo certificate is signed with ecdsa-with-SHA256: the binding is the SHA-256 of its DER form.
    assert context.channel_binding == hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).digest()
    tls_environment.setenv("GATEWAY_REQUIRE_TLS", "yes")
    assert tls_context().required  # type: ignore[union-attr]
