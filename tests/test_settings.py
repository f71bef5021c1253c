"""Configuration is strict: malformed values and missing secrets stop the process with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from phigate import envconfig
from tests.services import REPO


def test_bool_int_and_list_parsing() -> None:
    assert envconfig.get_bool("X", False, env={"X": "true"}) is True
    assert envconfig.get_bool("X", True, env={"X": "off"}) is False
    with pytest.raises(ImproperlyConfigured, match="X='maybe' is not a boolean"):
        envconfig.get_bool("X", False, env={"X": "maybe"})
    assert envconfig.get_int("N", 5, env={}) == 5
    with pytest.raises(ImproperlyConfigured, match="not an integer"):
        envconfig.get_int("N", 5, env={"N": "five"})
    with pytest.raises(ImproperlyConfigured, match="must be >= 1"):
        envconfig.get_int("N", 5, minimum=1, env={"N": "0"})
    assert envconfig.get_list("L", [], env={"L": "a, b,,c"}) == ["a", "b", "c"]


def test_secret_from_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    assert envconfig.get_str("S", env={"S_FILE": str(secret)}) == "s3cr3t"
    with pytest.raises(ImproperlyConfigured, match="either S or S_FILE"):
        envconfig.get_str("S", env={"S": "a", "S_FILE": str(secret)})
    with pytest.raises(ImproperlyConfigured, match="cannot be read"):
        envconfig.get_str("S", env={"S_FILE": str(tmp_path / "missing")})
    with pytest.raises(ImproperlyConfigured, match="must be set"):
        envconfig.require_str("S", env={})


def test_postgres_url_parsing() -> None:
    url = envconfig.parse_postgres_url("D", "postgresql://u%40x:p%2Fw@db.example:6543/cp?sslmode=require")
    assert (url.user, url.password, url.host, url.port, url.dbname) == ("u@x", "p/w", "db.example", "6543", "cp")
    assert url.options == {"sslmode": "require"}
    socket = envconfig.parse_postgres_url("D", "postgresql://u@/cp?host=/run/pg")
    assert socket.host == "/run/pg"
    with pytest.raises(ImproperlyConfigured):
        envconfig.parse_postgres_url("D", "mysql://u@h/db")
    with pytest.raises(ImproperlyConfigured):
        envconfig.parse_postgres_url("D", "postgresql://u@h/")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY"),
        ({"DEBUG": "sometimes"}, "DEBUG='sometimes' is not a boolean"),
        ({"TICKET_PENDING_TTL_SECONDS": "-5"}, "TICKET_PENDING_TTL_SECONDS=-5"),
        ({"OIDC_RP_CLIENT_ID": "client"}, "OIDC_RP_CLIENT_SECRET"),
    ],
)
def test_process_refuses_to_start_with_bad_settings(override: dict[str, str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASOURCE_")}
    env.update(override)
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert message in result.stderr
