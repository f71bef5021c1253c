"""``python -m demo.run`` (what ``make demo`` runs): the whole of phigate on a synthetic clinic, in the foreground.

Steps: PostgreSQL (embedded via pgserver: the control plane and the clinic each in its own cluster; or
DATABASE_URL's server for both) -> the ``clinic`` target database, loaded
once with fake data -> Redis (REDIS_URL if it answers, else a private redis-server) -> ``migrate``,
``provision_datasource``, ``seed_demo`` -> web, executor and gateway, each with only its own target
credential -> wait until all three answer -> ``$DEMO_STATE_DIR/credentials.json`` (0600).
Ctrl-C or SIGTERM stops everything it started and removes credentials.json; any child dying stops
everything too, with a non-zero exit.

Environment: WEB_PORT (8000), GATEWAY_PORT (6432), DEMO_STATE_DIR (.demo), DATABASE_URL, REDIS_URL,
DEMO_ROTATE_TOKENS (unset: a restart keeps the passwords and tokens the state directory already has).
DEMO_PROJECT_DIR (default: this repository) is only for exercising the orchestrator against stand-ins.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.client import HTTPException
from pathlib import Path
from types import FrameType
from typing import Any, Final

import psycopg

from demo import config
from demo.config import DemoError, DemoSettings
from demo.postgres import (
    CONTROL_CLUSTER,
    TARGET_CLUSTER,
    EmbeddedPostgres,
    Endpoints,
    ensure_clinic_loaded,
    external_endpoints,
    port_in_use,
    prepare_embedded_databases,
    prepare_external_databases,
)
from demo.redis_local import redis_answers, start_private_redis
from demo.supervisor import Child, first_dead, say, stop_all
from demo.tls import ensure_self_signed

READY_TIMEOUT_SECONDS: Final = 180.0
COMMAND_TIMEOUT_SECONDS: Final = 900.0
_NO_PROXY_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ShutdownRequested(Exception):
    """Raised from the SIGINT/SIGTERM handler so that every blocking step unwinds into the same cleanup."""


class _SignalState:
    """Whether a shutdown must wait: killing initdb or pg_ctl halfway would leave a cluster that cannot start."""

    deferring = False
    pending: str | None = None


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Ignore repeats: a second Ctrl-C must not interrupt the cleanup the first one started.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    name = signal.Signals(signum).name
    if _SignalState.deferring:
        _SignalState.pending = name
        return
    raise ShutdownRequested(name)


@contextmanager
def shutdown_deferred() -> Iterator[None]:
    """Run a block to completion even if SIGINT/SIGTERM arrives; the shutdown then starts right after it."""
    _SignalState.deferring = True
    try:
        yield
    except Exception:
        # A terminal's Ctrl-C also reaches our own subprocesses (initdb); their failure is then the shutdown.
        if _SignalState.pending:
            raise ShutdownRequested(_SignalState.pending) from None
        raise
    finally:
        _SignalState.deferring = False
    if _SignalState.pending:
        raise ShutdownRequested(_SignalState.pending)


# --------------------------------------------------------------------------------------------------------------
# Readiness probes
# --------------------------------------------------------------------------------------------------------------


def web_ready(port: int) -> bool:
    """/healthz answers 200 (no proxy: an operator's http_proxy must not intercept loopback)."""
    try:
        with _NO_PROXY_OPENER.open(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, HTTPException):
        return False


def gateway_ready(port: int) -> bool:
    return port_in_use(port)


def executor_ready(project_dir: Path, env: Mapping[str, str]) -> bool:
    """Our celery worker (default node name on this host) answers a broadcast ping."""
    node = f"celery@{socket.gethostname()}"
    command = [sys.executable, "-m", "celery", "-A", "phigate", "inspect", "ping", "-t", "2", "-d", node]
    try:
        result = subprocess.run(
            command,
            cwd=project_dir,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and "pong" in result.stdout


# --------------------------------------------------------------------------------------------------------------
# The orchestrator
# --------------------------------------------------------------------------------------------------------------


class Demo:
    """Everything one run started, so that a single ``close`` can undo it whatever step failed."""

    def __init__(self, settings: DemoSettings, environ: Mapping[str, str], project_dir: Path) -> None:
        self.settings = settings
        self.environ = dict(environ)
        self.project_dir = project_dir
        self.state_dir = settings.state_dir
        self.log_dir = settings.state_dir / "logs"
        self.credentials_path = settings.state_dir / "credentials.json"
        self.embedded: list[EmbeddedPostgres] = []
        self.redis_child: Child | None = None
        self.children: list[Child] = []

    # -- steps ----------------------------------------------------------------------------------------------

    def prepare_state_dir(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log_dir.mkdir(mode=0o700, exist_ok=True)
        self.credentials_path.unlink(missing_ok=True)  # left by a run that was killed: it is stale
        say(f"state in {self.state_dir}; process output is shown here prefixed [name] and kept in {self.log_dir}/")

    def check_ports(self) -> None:
        for name, port in (("WEB_PORT", self.settings.web_port), ("GATEWAY_PORT", self.settings.gateway_port)):
            if port_in_use(port):
                raise DemoError(f"port {port} is already in use; stop what holds it or set {name} to a free port")

    def start_postgres(self) -> Endpoints:
        if self.settings.database_url:
            say("PostgreSQL: the server in DATABASE_URL")
            endpoints = external_endpoints(self.settings.database_url)
            prepare_external_databases(endpoints)
            return endpoints
        say(
            f"PostgreSQL: embedded (pgserver), two clusters as in a deployment: the control plane in "
            f"{self.state_dir / CONTROL_CLUSTER}, the clinic in {self.state_dir / TARGET_CLUSTER}"
        )
        admin_urls = []
        for name in (CONTROL_CLUSTER, TARGET_CLUSTER):
            cluster = EmbeddedPostgres(self.state_dir, name)
            self.embedded.append(cluster)
            with shutdown_deferred():
                admin_urls.append(cluster.start())
        return prepare_embedded_databases(admin_urls[0], admin_urls[1], self.state_dir)

    def load_clinic(self, endpoints: Endpoints) -> None:
        counts = ensure_clinic_loaded(endpoints.owner_url)
        if counts is None:
            say("clinic: synthetic data already loaded, keeping it")
        else:
            say(
                f"clinic: loaded {counts.patients} patients, {counts.encounters} encounters, "
                f"{counts.prescriptions} prescriptions (all synthetic)"
            )

    def start_redis(self) -> str:
        if redis_answers(self.settings.redis_url):
            say("Redis: using REDIS_URL")
            return self.settings.redis_url
        self.redis_child, url = start_private_redis(self.state_dir, self.log_dir)
        say(f"Redis: nothing answers at REDIS_URL; started redis-server on {url}")
        return url

    def common_env(self, endpoints: Endpoints, redis_url: str) -> dict[str, str]:
        secret_key = config.load_or_create_secret(self.state_dir / "secret_key", lambda: secrets.token_urlsafe(50))
        pseudonym_key = config.load_or_create_secret(self.state_dir / "pseudonym_key", config.new_hex_key)
        # The accounting of disclosures' own key (policy.patient_keys): never the masking key.
        patient_key = config.load_or_create_secret(self.state_dir / "patient_pseudonym_key", config.new_hex_key)
        audit_key_file = self.state_dir / "audit_signing_key"
        config.load_or_create_secret(audit_key_file, config.new_hex_key)  # any 32 bytes are an Ed25519 seed
        common = config.common_env(
            database_url=endpoints.control_plane_url,
            redis_url=redis_url,
            secret_key=secret_key,
            pseudonym_key=pseudonym_key,
            web_port=self.settings.web_port,
            audit_signing_key_file=str(audit_key_file),
            patient_pseudonym_key=patient_key,
        )
        config.write_private_file(self.state_dir / "env", config.render_env_file(common))
        return common

    def manage(self, args: list[str], env: Mapping[str, str], *, quiet_stdout: bool = False) -> str:
        """Run one management command to completion; its stdout is returned and echoed unless it holds secrets."""
        command = args[0]
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.project_dir,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
        if not quiet_stdout:
            for line in result.stdout.splitlines():
                say(line, command)
        for line in result.stderr.splitlines():
            say(line, command)
        if result.returncode != 0:
            raise DemoError(f"manage.py {command} failed with exit code {result.returncode} (messages above)")
        return result.stdout

    def provision(self, endpoints: Endpoints, common: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """migrate, provision_datasource, seed_demo; returns (provisioned URLs, seeded users and agent)."""
        env = config.command_env(common, self.environ)
        self.manage(["migrate", "--noinput"], env)
        # The owner URL goes on the command line (the contract) without its password, which travels in
        # PGPASSWORD instead: command lines are visible to every local user, environments are not.
        owner_arg, owner_password = config.split_password(endpoints.owner_url)
        provision_env = dict(env, PGPASSWORD=owner_password) if owner_password else env
        out = self.manage(
            [
                "provision_datasource",
                "--name",
                config.DATASOURCE,
                "--owner-url",
                owner_arg,
                "--read-role",
                config.READ_ROLE,
                "--write-role",
                config.WRITE_ROLE,
                "--transfer-ownership",
            ],
            provision_env,
            quiet_stdout=True,
        )
        urls = config.parse_json_object(out, "provision_datasource")
        config.require_keys(urls, ("read_url", "write_url"), "provision_datasource")
        seed = self.seed(env)
        say(f"provisioned datasource '{config.DATASOURCE}' and seeded {len(seed['users'])} users and the agent")
        return urls, seed

    def seed(self, env: Mapping[str, str]) -> dict[str, Any]:
        """seed_demo, keeping the passwords and tokens of the last start on this state directory (so MCP configs
        and scripts written for it keep working) unless DEMO_ROTATE_TOKENS is set; seed_demo replaces any that
        the control plane no longer accepts."""
        logins = self.state_dir / config.LOGINS_FILE
        args = ["seed_demo", "--datasource", config.DATASOURCE]
        args += ["--agent-name", config.AGENT_NAME, "--agent-owner", config.AGENT_OWNER]
        previous = None
        if logins.exists():
            os.chmod(logins, 0o600)
            previous = config.read_json_file(logins)
            if self.settings.rotate_tokens:
                say("DEMO_ROTATE_TOKENS is set: new passwords and tokens for every demo user and the agent")
            else:
                args += ["--keep-from", str(logins)]
        out = self.manage(args, env, quiet_stdout=True)
        seed = config.parse_json_object(out, "seed_demo")
        config.require_keys(seed, ("users", "agent"), "seed_demo")
        if not isinstance(seed["agent"], dict) or "token" not in seed["agent"]:
            raise DemoError("manage.py seed_demo output lacks agent.token")
        document = config.logins_document(seed)
        if "--keep-from" in args:
            same = previous == document
            say(
                "kept the passwords and tokens of the last start (DEMO_ROTATE_TOKENS=1 issues new ones)"
                if same
                else "issued new passwords or tokens where the last start's were no longer valid"
            )
        config.write_private_file(logins, json.dumps(document, indent=2) + "\n")
        return seed

    def start_children(self, common: Mapping[str, str], urls: Mapping[str, Any]) -> None:
        commands = config.process_commands(
            sys.executable,
            self.settings.web_port,
            self.settings.gateway_port,
            str(self.state_dir / "celerybeat-schedule"),
        )
        cert, key = ensure_self_signed(self.state_dir)
        config.write_private_file(
            self.state_dir / config.GATEWAY_ENV_FILE,
            config.render_env_file(config.gateway_command_env(common, str(urls["read_url"]))),
        )
        for name in config.PROCESS_NAMES:
            env = config.process_env(
                name, common, self.environ, read_url=str(urls["read_url"]), write_url=str(urls["write_url"])
            )
            if name == "gateway":
                env.update(GATEWAY_TLS_CERT_FILE=str(cert), GATEWAY_TLS_KEY_FILE=str(key))
                env.setdefault("AUDIT_JOURNAL_DIR", str(self.state_dir / "audit-journal"))
            self.children.append(Child(name, commands[name], env, self.project_dir, self.log_dir))

    def all_children(self) -> list[Child]:
        return [*self.children, *([self.redis_child] if self.redis_child else [])]

    def check_alive(self) -> None:
        dead = first_dead(self.all_children())
        if dead is not None:
            raise DemoError(f"{dead.name} exited unexpectedly (exit code {dead.exit_code()}); see {dead.log_path}")

    def wait_ready(self, common: Mapping[str, str]) -> None:
        """Poll web, gateway and executor until each has answered once, watching for deaths meanwhile."""
        probe_env = config.command_env(common, self.environ)
        probes = {
            "web": lambda: web_ready(self.settings.web_port),
            "gateway": lambda: gateway_ready(self.settings.gateway_port),
            "executor": lambda: executor_ready(self.project_dir, probe_env),
        }
        pending = set(probes)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while pending:
            self.check_alive()
            if time.monotonic() > deadline:
                raise DemoError(f"not ready after {READY_TIMEOUT_SECONDS:.0f}s: {', '.join(sorted(pending))}")
            for name in sorted(pending):
                if probes[name]():
                    say(f"{name} is ready")
                    pending.discard(name)
            time.sleep(0.5)

    def publish_credentials(self, endpoints: Endpoints, seed: Mapping[str, Any]) -> None:
        document = config.build_credentials(
            settings=self.settings,
            seed=seed,
            target_owner_dsn=endpoints.owner_url,
            control_plane_dsn=endpoints.control_plane_url,
        )
        config.write_private_file(self.credentials_path, json.dumps(document, indent=2) + "\n")

    # -- whole run ------------------------------------------------------------------------------------------

    def run(self) -> int:
        self.prepare_state_dir()
        self.check_ports()
        endpoints = self.start_postgres()
        self.load_clinic(endpoints)
        redis_url = self.start_redis()
        common = self.common_env(endpoints, redis_url)
        urls, seed = self.provision(endpoints, common)
        self.start_children(common, urls)
        self.wait_ready(common)
        self.publish_credentials(endpoints, seed)
        say(
            f"ready: UI at {self.settings.public_url}/ ; logins and the agent DSN are in {self.credentials_path} "
            "(Ctrl-C stops everything)"
        )
        while True:
            self.check_alive()
            time.sleep(0.5)

    def close(self) -> None:
        """Undo in reverse order; every step is safe to call whatever happened before."""
        self.credentials_path.unlink(missing_ok=True)
        if self.children:
            say("stopping web, executor and gateway")
            stop_all(self.children)
        if self.redis_child is not None:
            stop_all([self.redis_child], grace=5)
        for cluster in reversed(self.embedded):
            if cluster.started:
                say(f"stopping embedded PostgreSQL ({cluster.name})")
                cluster.stop()


def project_dir_from(environ: Mapping[str, str]) -> Path:
    override = environ.get("DEMO_PROJECT_DIR", "").strip()
    return Path(override).resolve() if override else Path(__file__).resolve().parent.parent


def main() -> int:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    demo: Demo | None = None
    try:
        settings = config.settings_from_env(os.environ)
        demo = Demo(settings, os.environ, project_dir_from(os.environ))
        return demo.run()
    except ShutdownRequested as stop:
        say(f"{stop} received, shutting down")
        return 0
    except DemoError as exc:
        say(f"error: {exc}")
        return 1
    except (psycopg.Error, OSError, subprocess.SubprocessError) as exc:
        say(f"error: {type(exc).__name__}: {_first_line(exc)}")
        return 1
    finally:
        # Nothing may interrupt the cleanup, whichever way we got here.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if demo is not None:
            demo.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


if __name__ == "__main__":
    sys.exit(main())
