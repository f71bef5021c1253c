"""The demo's synthetic clinic (determinism, fiction-only identifiers) and the orchestrator's pure helpers.

Database tests run against a real PostgreSQL (``DEMO_TEST_ADMIN_URL``, default the local trust-auth server)
in scratch databases with unique names that are dropped afterwards.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg
import pytest
from psycopg import sql

from demo import clinic, config
from demo.config import DemoError
from demo.postgres import external_endpoints
from demo.run import Demo

ADMIN_URL = os.environ.get("DEMO_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TABLES = ("diagnosis_codes", "patients", "encounters", "prescriptions")
SMALL = 500


# --------------------------------------------------------------------------------------------------------------
# Scratch databases
# --------------------------------------------------------------------------------------------------------------


def _url_for(dbname: str) -> str:
    return config.with_database(ADMIN_URL, dbname)


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """Four scratch databases: two loads with one seed, one with another seed, one left empty."""
    prefix = f"demo_clinic_test_{uuid.uuid4().hex[:10]}"
    names = {key: f"{prefix}_{key}" for key in ("a", "b", "other", "empty")}
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        for name in names.values():
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        for key, seed in (("a", clinic.DEFAULT_SEED), ("b", clinic.DEFAULT_SEED), ("other", 7)):
            with psycopg.connect(_url_for(names[key])) as conn:
                clinic.load_clinic(conn, patients=SMALL, seed=seed)
        yield {key: _url_for(name) for key, name in names.items()}
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            for name in names.values():
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _table_digest(url: str, table: str) -> str:
    """SHA-256 of the table's full text dump in primary-key order, with session settings pinned."""
    key = "code" if table == "diagnosis_codes" else "id"
    digest = hashlib.sha256()
    with psycopg.connect(url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("SET DateStyle = 'ISO, YMD'")
        query = sql.SQL("COPY (SELECT * FROM {} ORDER BY {}) TO STDOUT").format(
            sql.Identifier(table), sql.Identifier(key)
        )
        with conn.cursor().copy(query) as copy:
            for block in copy:
                digest.update(block)
    return digest.hexdigest()


def _scalar(url: str, query: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


# --------------------------------------------------------------------------------------------------------------
# The clinic data
# --------------------------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_tables(databases: dict[str, str]) -> None:
    for table in TABLES:
        assert _table_digest(databases["a"], table) == _table_digest(databases["b"], table), table


def test_another_seed_gives_other_data(databases: dict[str, str]) -> None:
    for table in ("patients", "encounters", "prescriptions"):
        assert _table_digest(databases["a"], table) != _table_digest(databases["other"], table), table


def test_counts_match_what_was_loaded(databases: dict[str, str]) -> None:
    patients = _scalar(databases["a"], "SELECT count(*) FROM patients")
    encounters = _scalar(databases["a"], "SELECT count(*) FROM encounters")
    prescriptions = _scalar(databases["a"], "SELECT count(*) FROM prescriptions")
    assert patients == SMALL
    assert isinstance(encounters, int) and isinstance(prescriptions, int)
    assert 2.5 * SMALL <= encounters <= 3.5 * SMALL  # ~3 per patient
    assert 1.25 <= prescriptions / encounters <= 1.75  # ~1.5 per encounter
    assert _scalar(databases["a"], "SELECT count(*) FROM diagnosis_codes") == len(clinic.DIAGNOSES) >= 24


def test_load_returns_the_counts_and_is_fast_at_full_size() -> None:
    name = f"demo_clinic_test_{uuid.uuid4().hex[:10]}_full"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        started = time.monotonic()
        with psycopg.connect(_url_for(name)) as conn:
            counts = clinic.load_clinic(conn)
        elapsed = time.monotonic() - started
        url = _url_for(name)
        assert counts == clinic.ClinicCounts(
            patients=10_000,
            encounters=_scalar(url, "SELECT count(*) FROM encounters"),  # type: ignore[arg-type]
            prescriptions=_scalar(url, "SELECT count(*) FROM prescriptions"),  # type: ignore[arg-type]
        )
        assert _scalar(url, "SELECT count(*) FROM patients") == 10_000
        assert elapsed < 30, f"10,000 patients took {elapsed:.1f}s"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_every_note_mentions_the_patients_name_and_a_date(databases: dict[str, str]) -> None:
    bad = _scalar(
        databases["a"],
        "SELECT count(*) FROM encounters e JOIN patients p ON p.id = e.patient_id "
        r"WHERE e.notes IS NULL OR position(p.full_name IN e.notes) = 0 OR e.notes !~ '\d{4}-\d{2}-\d{2}'",
    )
    assert bad == 0


def test_identifiers_come_from_ranges_reserved_for_fiction(databases: dict[str, str]) -> None:
    with psycopg.connect(databases["a"]) as conn:
        rows = conn.execute("SELECT mrn, ssn, phone, email, address, zip FROM patients").fetchall()
    assert rows
    for mrn, ssn, phone, email, address, zip_code in rows:
        assert ssn.startswith("9") and re.fullmatch(r"9\d\d-\d\d-\d{4}", ssn)
        assert re.fullmatch(r"MRN\d{8}", mrn)
        assert phone is None or re.fullmatch(r"\d{3}-555-01\d\d", phone)
        assert email is None or email.rsplit("@", 1)[1] in {"example.com", "example.org"}
        assert re.fullmatch(r"\d+ \w+ \w+, [\w ]+, [A-Z]{2} \d{5}", address) and address.endswith(zip_code)


def test_encounters_use_known_codes_and_happen_after_birth(databases: dict[str, str]) -> None:
    unknown = _scalar(
        databases["a"],
        "SELECT count(*) FROM encounters e LEFT JOIN diagnosis_codes d ON d.code = e.diagnosis_code "
        "WHERE d.code IS NULL",
    )
    before_birth = _scalar(
        databases["a"],
        "SELECT count(*) FROM encounters e JOIN patients p ON p.id = e.patient_id "
        "WHERE e.admitted_at < p.date_of_birth",
    )
    assert unknown == 0 and before_birth == 0


def test_clinic_is_loaded_tells_loaded_from_empty(databases: dict[str, str]) -> None:
    with psycopg.connect(databases["a"]) as conn:
        assert clinic.clinic_is_loaded(conn)
    with psycopg.connect(databases["empty"]) as conn:
        assert not clinic.clinic_is_loaded(conn)


def test_phi_tags_name_real_columns_with_known_types(databases: dict[str, str]) -> None:
    with psycopg.connect(databases["a"]) as conn:
        columns = set(
            conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
            ).fetchall()
        )
    tagged = {(tag.table, tag.column) for tag in clinic.PHI_TAGS}
    assert tagged <= columns
    assert all(tag.phi_type in clinic.PHI_TYPES for tag in clinic.PHI_TAGS)
    assert ("encounters", "notes") in tagged and ("patients", "ssn") in tagged
    assert not any(tag.table in {"diagnosis_codes", "prescriptions"} for tag in clinic.PHI_TAGS)
    with pytest.raises(ValueError):
        clinic.PhiTag("patients", "ssn", "dna_sequence")


# --------------------------------------------------------------------------------------------------------------
# Orchestrator helpers
# --------------------------------------------------------------------------------------------------------------

READ_URL = "postgresql://clinic_reader:r3ad@127.0.0.1:5999/clinic"
WRITE_URL = "postgresql://clinic_writer:wr1te@127.0.0.1:5999/clinic"


def _common() -> dict[str, str]:
    return config.common_env(
        database_url="postgresql://phigate:cp@127.0.0.1:5999/phigate",
        redis_url="redis://127.0.0.1:6379/0",
        secret_key="s3cret key with 'quotes' and $dollars",
        pseudonym_key="ab" * 32,
        web_port=8123,
    )


def _env_for(name: str, base: dict[str, str] | None = None) -> dict[str, str]:
    return config.process_env(name, _common(), base or {"PATH": "/usr/bin"}, read_url=READ_URL, write_url=WRITE_URL)


def _datasource_vars(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key.startswith("DATASOURCE_")}


def test_web_gets_no_target_credential() -> None:
    env = _env_for("web")
    assert _datasource_vars(env) == {}
    assert READ_URL not in env.values() and WRITE_URL not in env.values()


def test_gateway_gets_only_the_read_url() -> None:
    assert _datasource_vars(_env_for("gateway")) == {"DATASOURCE_CLINIC_READ_URL": READ_URL}


def test_executor_gets_only_the_write_url() -> None:
    assert _datasource_vars(_env_for("executor")) == {"DATASOURCE_CLINIC_WRITE_URL": WRITE_URL}


def test_inherited_credentials_are_stripped_and_common_env_wins() -> None:
    leaky = {
        "PATH": "/usr/bin",
        "DATASOURCE_CLINIC_WRITE_URL": "postgresql://leak@x/clinic",
        "DATASOURCE_OTHER_READ_URL": "postgresql://leak@x/other",
        "PGPASSWORD": "leak",
        "DATABASE_URL": "postgresql://leak@x/other",
    }
    for name in config.PROCESS_NAMES:
        env = _env_for(name, leaky)
        assert "PGPASSWORD" not in env
        assert "leak" not in " ".join(env.values())
        assert env["PATH"] == "/usr/bin"
        for key, value in _common().items():
            assert env[key] == value
    with pytest.raises(ValueError):
        _env_for("shell")


def test_common_env_has_the_documented_values() -> None:
    common = _common()
    assert common["DJANGO_SETTINGS_MODULE"] == "phigate.settings"
    assert common["LOCAL_LOGIN"] == "True"
    assert common["PUBLIC_URL"] == "http://127.0.0.1:8123"
    assert common["ALLOWED_HOSTS"] == "127.0.0.1,localhost"
    assert _datasource_vars(common) == {}


def test_command_lines_carry_no_secret() -> None:
    commands = config.process_commands("/venv/bin/python", 8123, 6543, "/state/celerybeat-schedule")
    assert commands["web"][1:] == ["-m", "uvicorn", "phigate.asgi:application", "--host", "127.0.0.1", "--port", "8123"]
    assert commands["executor"][1:] == [
        "-m",
        "celery",
        "-A",
        "phigate",
        "worker",
        "--loglevel=INFO",
        "--concurrency=2",
        "--beat",
        "--schedule",
        "/state/celerybeat-schedule",
    ]
    assert commands["gateway"][1:] == ["manage.py", "gateway", "--host", "127.0.0.1", "--port", "6543"]
    argv = " ".join(" ".join(command) for command in commands.values())
    for secret in (READ_URL, WRITE_URL, *_common().values()):
        if secret not in {"True", "phigate.settings", "127.0.0.1,localhost"}:
            assert secret not in argv


def test_env_file_round_trips_through_a_posix_shell(tmp_path: Path) -> None:
    path = tmp_path / "env"
    config.write_private_file(path, config.render_env_file(_common()))
    script = f"set -a; . {path}; set +a; env -0"
    out = subprocess.run(
        ["sh", "-c", script], env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, capture_output=True, check=True
    ).stdout
    loaded = dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
    for key, value in _common().items():
        assert loaded[key] == value
    assert "DATASOURCE_" not in path.read_text()


def _seed() -> dict[str, object]:
    return {
        "users": [{"username": "alice", "password": "pw", "role": "reviewer", "api_token": "t1"}],
        "agent": {"name": "claude-code", "owner": "bob", "token": "a/b+c@d:e"},
        "phi_tags": 10,
    }


def test_credentials_document_fields() -> None:
    settings = config.settings_from_env({"WEB_PORT": "8123", "GATEWAY_PORT": "6543"}, cwd=Path("/srv"))
    document = config.build_credentials(
        settings=settings,
        seed=_seed(),
        target_owner_dsn="postgresql://postgres:pw@127.0.0.1:5999/clinic",
        control_plane_dsn="postgresql://phigate:cp@127.0.0.1:5999/phigate",
    )
    assert set(document) == {
        "ui_url",
        "api_url",
        "datasource",
        "agent_dsn",
        "agent_token",
        "agent_owner",
        "users",
        "target_owner_dsn",
        "control_plane_dsn",
    }
    assert document["ui_url"] == "http://127.0.0.1:8123/"
    assert document["api_url"] == "http://127.0.0.1:8123/api/v1/"
    assert document["datasource"] == "clinic"
    assert document["agent_token"] == "a/b+c@d:e"
    assert document["agent_owner"] == "bob"
    assert document["users"] == _seed()["users"]
    dsn = urlsplit(document["agent_dsn"])
    assert (dsn.scheme, dsn.hostname, dsn.port, dsn.path) == ("postgresql", "127.0.0.1", 6543, "/clinic")
    assert dsn.username == "claude-code" and unquote(dsn.password or "") == "a/b+c@d:e"


def test_credentials_file_is_written_0600(tmp_path: Path) -> None:
    settings = config.settings_from_env({"DEMO_STATE_DIR": str(tmp_path), "WEB_PORT": "8123"})
    demo = Demo(settings, {}, tmp_path)
    endpoints = external_endpoints("postgresql://owner:pw@127.0.0.1:5999/phigate")
    old_umask = os.umask(0)
    try:
        demo.publish_credentials(endpoints, _seed())
    finally:
        os.umask(old_umask)
    mode = stat.S_IMODE(demo.credentials_path.stat().st_mode)
    assert mode == 0o600
    assert '"target_owner_dsn": "postgresql://owner:pw@127.0.0.1:5999/clinic"' in demo.credentials_path.read_text()


def test_private_files_replace_looser_ones_and_secrets_persist(tmp_path: Path) -> None:
    path = tmp_path / "secret_key"
    path.write_text("")
    path.chmod(0o644)
    first = config.load_or_create_secret(path, config.new_hex_key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.load_or_create_secret(path, config.new_hex_key) == first
    assert re.fullmatch(r"[0-9a-f]{64}", first)


def test_settings_defaults_and_validation(tmp_path: Path) -> None:
    settings = config.settings_from_env({}, cwd=tmp_path)
    assert (settings.web_port, settings.gateway_port) == (8000, 6432)
    assert settings.state_dir == tmp_path / ".demo"
    assert settings.database_url is None
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    for bad in (
        {"WEB_PORT": "http"},
        {"GATEWAY_PORT": "70000"},
        {"WEB_PORT": "7000", "GATEWAY_PORT": "7000"},
        {"DATABASE_URL": "mysql://x/y"},
        {"DATABASE_URL": "postgresql://u@h:1/"},
    ):
        with pytest.raises(DemoError):
            config.settings_from_env(bad, cwd=tmp_path)


def test_url_helpers() -> None:
    assert (
        config.postgres_url("u", "p@ss/w:rd", "127.0.0.1", 5432, "db")
        == "postgresql://u:p%40ss%2Fw%3Ard@127.0.0.1:5432/db"
    )
    assert config.with_database("postgresql://u:p@h:1/phigate?host=/run/pg&sslmode=disable", "clinic") == (
        "postgresql://u:p@h:1/clinic?host=/run/pg&sslmode=disable"
    )
    assert config.split_password("postgresql://u:p%40w@h:1/clinic") == ("postgresql://u@h:1/clinic", "p@w")
    assert config.split_password("postgresql://u@/clinic?host=/tmp") == ("postgresql://u@/clinic?host=/tmp", None)


def test_external_endpoints_put_clinic_next_to_the_control_plane() -> None:
    endpoints = external_endpoints("postgresql://admin:pw@db.internal:5433/phigate")
    assert endpoints.control_plane_url == "postgresql://admin:pw@db.internal:5433/phigate"
    assert endpoints.owner_url == "postgresql://admin:pw@db.internal:5433/clinic"
    with pytest.raises(DemoError):
        external_endpoints("postgresql://admin:pw@db.internal:5433/clinic")


def test_management_output_parsing() -> None:
    out = 'Some warning\n{"read_url": "r", "write_url": "w"}\n'
    assert config.parse_json_object(out, "provision_datasource") == {"read_url": "r", "write_url": "w"}
    assert config.parse_json_object('{\n  "a": 1\n}\n', "x") == {"a": 1}
    with pytest.raises(DemoError):
        config.parse_json_object("no json here\n[1, 2]\n", "seed_demo")
    with pytest.raises(DemoError):
        config.require_keys({"read_url": "r"}, ("read_url", "write_url"), "provision_datasource")
