"""TLS on the wire when a certificate is configured (make demo generates a self-signed one)."""

from __future__ import annotations

from urllib.parse import quote

import psycopg
import pytest

from demo.tls import ensure_self_signed
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


def test_sslmode_require_gets_tls_and_verify_full_checks_the_certificate(tls_gateway) -> None:  # type: ignore[no-untyped-def]
    agent, token = make_agent(make_user(Role.ENGINEER))
    base = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{tls_gateway['port']}/clinic"
    with psycopg.connect(base + "?sslmode=require") as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(f"{base}?sslmode=verify-full&sslrootcert={tls_gateway['cert']}") as conn:
        assert conn.pgconn.ssl_in_use


def test_without_a_certificate_the_gateway_declines_tls(services) -> None:  # type: ignore[no-untyped-def]
    agent, token = make_agent(make_user(Role.ENGINEER))
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        psycopg.connect(dsn + "?sslmode=require", connect_timeout=10)
    with psycopg.connect(dsn + "?sslmode=prefer") as conn:
        assert not conn.pgconn.ssl_in_use
