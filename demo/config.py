"""Pure pieces of the demo orchestrator: settings, URLs, per-process environments, the credentials document.

Kept apart from process management so the product guarantees they encode (which process may hold which
target credential, what lands in which file and with which mode) are unit-testable without starting anything.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit, urlunsplit

DATASOURCE: Final = "clinic"
CONTROL_PLANE_DB: Final = "phigate"
AGENT_NAME: Final = "claude-code"
AGENT_OWNER: Final = "bob"
READ_ROLE: Final = "clinic_reader"
WRITE_ROLE: Final = "clinic_writer"
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
PROCESS_NAMES: Final = ("web", "executor", "gateway")
# In the state directory, all 0600: the demo's passwords and tokens, kept across restarts (seed_demo --keep-from),
# and the gateway's environment (control plane plus the read-only role's URL) for commands that read the target.
LOGINS_FILE: Final = "logins.json"
GATEWAY_ENV_FILE: Final = "gateway.env"
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"", "0", "false", "no", "off"})

# Variables a child must never inherit from whoever ran `make demo`: a stray target credential or libpq
# password in the operator's shell would silently defeat credential separation.
_DATASOURCE_PREFIX: Final = "DATASOURCE_"
_INHERITED_SECRETS: Final = frozenset({"PGPASSWORD", "PGPASSFILE", "DATABASE_URL", "REDIS_URL"})


class DemoError(Exception):
    """A failure the operator can act on; its message is printed as the one line that explains it."""


# --------------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSettings:
    """What the operator can change, read once from the environment so every later step agrees."""

    web_port: int
    gateway_port: int
    state_dir: Path
    database_url: str | None
    redis_url: str
    # DEMO_ROTATE_TOKENS: issue new passwords and tokens even though the state directory has valid ones.
    rotate_tokens: bool = False

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip() or str(default)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise DemoError(f"{name}={raw!r} is not a TCP port number (1-65535)")
    return int(raw)


def _flag(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise DemoError(f"{name}={raw!r} is not a yes/no value (1 or 0)")


def settings_from_env(environ: Mapping[str, str], cwd: Path | None = None) -> DemoSettings:
    """Read WEB_PORT, GATEWAY_PORT, DEMO_STATE_DIR, DATABASE_URL, REDIS_URL and DEMO_ROTATE_TOKENS, with the
    documented defaults."""
    state_dir = Path(environ.get("DEMO_STATE_DIR", "").strip() or ".demo")
    if not state_dir.is_absolute():
        state_dir = (cwd or Path.cwd()) / state_dir
    web_port = _port(environ, "WEB_PORT", 8000)
    gateway_port = _port(environ, "GATEWAY_PORT", 6432)
    if web_port == gateway_port:
        raise DemoError("WEB_PORT and GATEWAY_PORT must differ")
    database_url = environ.get("DATABASE_URL", "").strip() or None
    if database_url is not None:
        check_postgres_url(database_url, "DATABASE_URL")
    return DemoSettings(
        web_port=web_port,
        gateway_port=gateway_port,
        state_dir=state_dir,
        database_url=database_url,
        redis_url=environ.get("REDIS_URL", "").strip() or DEFAULT_REDIS_URL,
        rotate_tokens=_flag(environ, "DEMO_ROTATE_TOKENS"),
    )


# --------------------------------------------------------------------------------------------------------------
# PostgreSQL URLs
# --------------------------------------------------------------------------------------------------------------


def check_postgres_url(url: str, what: str) -> None:
    """Reject what the control plane's parser would reject, before anything is started."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise DemoError(f"{what} must be a postgresql:// URL")
    if not parts.path.strip("/"):
        raise DemoError(f"{what} must name a database (postgresql://user:password@host:port/dbname)")


def postgres_url(user: str, password: str | None, host: str, port: int, dbname: str) -> str:
    """``postgresql://user:password@host:port/dbname`` with every part percent-encoded."""
    userinfo = quote(user, safe="")
    if password:
        userinfo += ":" + quote(password, safe="")
    return f"postgresql://{userinfo}@{host}:{port}/{quote(dbname, safe='')}"


def with_database(url: str, dbname: str) -> str:
    """The same server, user and options, another database (the clinic lives next to the control plane)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))


def split_password(url: str) -> tuple[str, str | None]:
    """(URL without its password, the password): lets a URL go on a command line and the secret in the env."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    userinfo = quote(unquote(parts.username or ""), safe="")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}")), unquote(parts.password)


def agent_dsn(token: str, gateway_port: int, agent_name: str = AGENT_NAME, datasource: str = DATASOURCE) -> str:
    """What an agent puts in its Postgres client: the gateway, with its token as the password."""
    return postgres_url(agent_name, token, "127.0.0.1", gateway_port, datasource)


# --------------------------------------------------------------------------------------------------------------
# Environments
# --------------------------------------------------------------------------------------------------------------


def datasource_var(kind: str, datasource: str = DATASOURCE) -> str:
    """``DATASOURCE_<NAME>_<READ|WRITE>_URL``, the variable policy.credentials reads in each process."""
    if kind not in {"READ", "WRITE"}:
        raise ValueError(f"unknown credential kind {kind!r}")
    return f"{_DATASOURCE_PREFIX}{datasource.upper()}_{kind}_URL"


def common_env(
    *,
    database_url: str,
    redis_url: str,
    secret_key: str,
    pseudonym_key: str,
    web_port: int,
    audit_signing_key_file: str = "",
    patient_pseudonym_key: str = "",
) -> dict[str, str]:
    """The control-plane environment every phigate process shares; it holds no target credential.

    The audit signing key travels as a file path, so the env file can be sourced to run ``export_evidence``
    and ``verify_audit`` against the demo. (In production only the executor and the operators who export hold
    it; the other processes get ``AUDIT_PUBLIC_KEY``.)
    """
    audit = {"AUDIT_SIGNING_KEY_FILE": audit_signing_key_file} if audit_signing_key_file else {}
    accounting = {"PATIENT_PSEUDONYM_KEY": patient_pseudonym_key} if patient_pseudonym_key else {}
    return {
        **audit,
        **accounting,
        "DJANGO_SETTINGS_MODULE": "phigate.settings",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DJANGO_SECRET_KEY": secret_key,
        "PSEUDONYM_KEY": pseudonym_key,
        "LOCAL_LOGIN": "True",
        "PUBLIC_URL": f"http://127.0.0.1:{web_port}",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
    }


def inheritable_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The operator's environment minus anything that could carry a database credential into a child."""
    return {
        key: value
        for key, value in environ.items()
        if not key.startswith(_DATASOURCE_PREFIX) and key not in _INHERITED_SECRETS
    }


def command_env(common: Mapping[str, str], base: Mapping[str, str]) -> dict[str, str]:
    """Environment for management commands: control plane only (unbuffered, so output interleaves sanely)."""
    env = inheritable_env(base)
    env.update(common)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def process_env(
    name: str,
    common: Mapping[str, str],
    base: Mapping[str, str],
    *,
    read_url: str,
    write_url: str,
    datasource: str = DATASOURCE,
) -> dict[str, str]:
    """One long-running process's environment: the common part plus ONLY the target credential it needs.

    web gets none (it never touches the target), the gateway only the read URL, the executor only the write
    URL. This is the demo's half of the credential-separation guarantee.
    """
    env = command_env(common, base)
    if name == "gateway":
        env[datasource_var("READ", datasource)] = read_url
    elif name == "executor":
        env[datasource_var("WRITE", datasource)] = write_url
    elif name != "web":
        raise ValueError(f"unknown process {name!r}")
    return env


def process_commands(python: str, web_port: int, gateway_port: int, beat_schedule: str) -> dict[str, list[str]]:
    """The command lines; no secret ever appears in them (they are visible to every user via ps).

    The executor embeds Celery beat (``--beat``) for the periodic expiry sweep: one process in the demo. In a
    deployment with several executors, run beat once, separately.
    """
    return {
        "web": [python, "-m", "uvicorn", "phigate.asgi:application", "--host", "127.0.0.1", "--port", str(web_port)],
        "executor": [
            python,
            "-m",
            "celery",
            "-A",
            "phigate",
            "worker",
            "--loglevel=INFO",
            "--concurrency=2",
            "--beat",
            "--schedule",
            beat_schedule,
        ],
        "gateway": [python, "manage.py", "gateway", "--host", "127.0.0.1", "--port", str(gateway_port)],
    }


def gateway_command_env(common: Mapping[str, str], read_url: str, datasource: str = DATASOURCE) -> dict[str, str]:
    """What ``gateway.env`` holds: the common environment plus the read-only role's URL, the one credential the
    gateway has. Commands that read the target under policy (``discover_phi``) run with it; never the web process
    or ``manage.py mcp``, which hold no target credential."""
    return {**common, datasource_var("READ", datasource): read_url}


def render_env_file(common: Mapping[str, str]) -> str:
    """KEY=value lines that ``set -a; . .demo/env; set +a`` turns back into the common environment."""
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in common.items())


# --------------------------------------------------------------------------------------------------------------
# Management command output and the credentials document
# --------------------------------------------------------------------------------------------------------------


def parse_json_object(stdout: str, command: str) -> dict[str, Any]:
    """The JSON object a management command printed; the last such line wins, so stray lines are tolerated."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    try:  # pretty-printed over several lines
        value = json.loads(stdout)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    raise DemoError(f"manage.py {command} did not print a JSON object on stdout")


def require_keys(document: Mapping[str, Any], keys: tuple[str, ...], command: str) -> None:
    """Fail with the command's name rather than a KeyError deep in the orchestrator."""
    missing = [key for key in keys if key not in document]
    if missing:
        raise DemoError(f"manage.py {command} output lacks {', '.join(missing)}")


def build_credentials(
    *,
    settings: DemoSettings,
    seed: Mapping[str, Any],
    target_owner_dsn: str,
    control_plane_dsn: str,
) -> dict[str, Any]:
    """The document a human (or an e2e test) reads to use the running demo."""
    agent = seed["agent"]
    token = str(agent["token"])
    return {
        "ui_url": f"{settings.public_url}/",
        "api_url": f"{settings.public_url}/api/v1/",
        "datasource": DATASOURCE,
        "agent_dsn": agent_dsn(token, settings.gateway_port, str(agent.get("name", AGENT_NAME))),
        "agent_token": token,
        "agent_owner": str(agent.get("owner", AGENT_OWNER)),
        "users": seed["users"],
        "target_owner_dsn": target_owner_dsn,
        "control_plane_dsn": control_plane_dsn,
    }


def read_json_file(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or not JSON (a file cut short by a crash)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def logins_document(seed: Mapping[str, Any]) -> dict[str, Any]:
    """What the state directory keeps of a ``seed_demo`` run (passwords and tokens), for the next start's
    ``seed_demo --keep-from``."""
    return {"users": seed["users"], "agent": seed["agent"]}


# --------------------------------------------------------------------------------------------------------------
# Private files
# --------------------------------------------------------------------------------------------------------------


def write_private_file(path: Path, text: str) -> None:
    """Write a secret-bearing file readable by its owner only, replacing any previous one atomically.

    Created with mode 0600 from the start (os.open), so there is no window in which it is world-readable.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            fd = -1
            handle.write(text)
    finally:
        if fd != -1:
            os.close(fd)
    os.replace(tmp, path)


def load_or_create_secret(path: Path, factory: Callable[[], str]) -> str:
    """A secret generated on first use and kept, so restarts keep sessions, pseudonyms and passwords stable."""
    if path.exists():
        os.chmod(path, 0o600)
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    value = factory()
    write_private_file(path, value + "\n")
    return value


def new_password() -> str:
    """URL-safe, so it survives being embedded in a DSN without surprises."""
    return secrets.token_urlsafe(24)


def new_hex_key() -> str:
    return secrets.token_hex(32)
