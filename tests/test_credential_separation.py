"""Web: no target credential. Gateway: read-only role. Executor: write role (non-negotiable 3)."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from psycopg import errors

from policy.credentials import credential_variables
from tests.services import REPO


def test_test_process_playing_the_web_holds_no_target_credential() -> None:
    assert credential_variables() == []


def _run(argv: list[str], extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASOURCE_")}
    env.update(extra_env)
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_web_process_refuses_to_start_with_a_target_credential() -> None:
    load_web = [sys.executable, "-c", "import phigate.asgi"]
    assert _run(load_web, {}).returncode == 0
    for variable in ("DATASOURCE_CLINIC_WRITE_URL", "DATASOURCE_CLINIC_READ_URL", "DATASOURCE_CLINIC_WRITE_URL_FILE"):
        refused = _run(load_web, {variable: "postgresql://x:y@127.0.0.1/clinic"})
        assert refused.returncode != 0
        assert "must not hold target credentials" in refused.stderr
        assert "postgresql://x:y" not in refused.stderr  # names only, never the secret


def test_gateway_refuses_to_start_with_the_write_credential() -> None:
    result = _run(
        [sys.executable, "manage.py", "gateway", "--port", "0"],
        {"DATASOURCE_CLINIC_WRITE_URL": "postgresql://x:y@127.0.0.1/clinic"},
    )
    assert result.returncode != 0
    assert "must not hold a write credential" in result.stderr


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO scratch VALUES (9999, 'x')",
        "UPDATE scratch SET label = 'x'",
        "DELETE FROM scratch",
        "TRUNCATE scratch",
        "CREATE TABLE reader_made (id int)",
        "DROP TABLE scratch",
        "INSERT INTO phigate.execution_ledger (execution_key, ticket_id, sql_sha256) "
        "VALUES (gen_random_uuid(), 1, repeat('0', 64))",
    ],
)
def test_database_refuses_writes_by_the_read_role_even_outside_read_only_mode(target, statement: str) -> None:  # type: ignore[no-untyped-def]
    """Not our code: PostgreSQL itself refuses, even after the reader switches read-only mode off."""
    with psycopg.connect(target.read_url, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")
        with pytest.raises((errors.InsufficientPrivilege, errors.ReadOnlySqlTransaction)):
            conn.execute(statement)
    with psycopg.connect(target.owner_url) as conn:
        assert conn.execute("SELECT count(*) FROM scratch").fetchone()[0] >= 40  # type: ignore[index]


def test_read_role_cannot_read_the_ledger(target) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(target.read_url, autocommit=True) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM phigate.execution_ledger")


def test_write_role_is_not_a_superuser_and_cannot_manage_roles(target) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(target.write_url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (False, False, False)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE ROLE escalate")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DELETE FROM phigate.execution_ledger")  # the ledger only grows
