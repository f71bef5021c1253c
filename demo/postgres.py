"""PostgreSQL for the demo: an embedded server (pgserver wheel) or the operator's, plus databases and roles.

Embedded mode hardens what pgserver sets up. pgserver initialises with ``trust`` for everyone and listens on
a unix socket only; that would let any local process connect as ``clinic_writer`` without its password and
make the product's credential separation meaningless in the demo. So the orchestrator:

* gives ``postgres`` and a non-superuser control-plane role ``phigate`` random passwords kept in the state dir,
* rewrites ``pg_hba.conf`` so only ``postgres`` over the unix socket is trusted (the orchestrator's own admin
  path) and everything over TCP needs a SCRAM password,
* restarts the server listening on 127.0.0.1 on a free port (pgserver always starts socket-only, ``-h ""``),
  so the URLs handed out are plain ``postgresql://user:pass@127.0.0.1:port/db`` that every client accepts.

The control plane then runs as ``phigate``, which owns database ``phigate`` and has no privilege on the
clinic's tables: the web process's DATABASE_URL is not a back door to the target.

Embedded mode runs two clusters, as a deployment does: the control plane in ``<state>/pg-control`` and the
clinic in ``<state>/pg``, each with its own superuser password. Nothing the target does (an agent's transaction
held open, a long report) then touches the control plane's transactions, and the clinic's owner credential
(``target_owner_dsn``) is no superuser of the audit trail.
"""

from __future__ import annotations

import atexit
import os
import shlex
import socket
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import sql

from demo import clinic
from demo.config import (
    CONTROL_PLANE_DB,
    DATASOURCE,
    DemoError,
    load_or_create_secret,
    new_password,
    postgres_url,
    with_database,
)

SUPERUSER: Final = "postgres"
CONTROL_PLANE_ROLE: Final = "phigate"

PG_HBA: Final = """\
# Written by demo/postgres.py on every start: pgserver's default is `trust` for everyone.
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 trust
local   all       all                      scram-sha-256
host    all       all       127.0.0.1/32   scram-sha-256
host    all       all       ::1/128        scram-sha-256
"""


CONTROL_CLUSTER: Final = "pg-control"
TARGET_CLUSTER: Final = "pg"  # the name of the demo's only cluster before issue 15: a loaded clinic is kept


@dataclass(frozen=True)
class Endpoints:
    """Where each party connects. Passwords are inside the URLs; never print these."""

    control_plane_url: str  # DATABASE_URL of every phigate process
    owner_url: str  # superuser/owner of the clinic database: provisioning and target_owner_dsn
    admin_url: str  # the orchestrator's own maintenance connection to the clinic's server (any database)


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """True when something already accepts on 127.0.0.1:port (so our child would fail to bind)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def _runtime_dir_in(state_dir: Path) -> Iterator[None]:
    """pgserver keeps an inter-process lock file in the user's runtime directory, fixed when it is imported.
    Without XDG_RUNTIME_DIR that is /tmp/runtime-<uid>, which would outlive the demo: for the import, point it
    into the state directory instead (a desktop session's own runtime directory is used as it is)."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        yield
        return
    run = state_dir / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(run)
    try:
        yield
    finally:
        del os.environ["XDG_RUNTIME_DIR"]


class EmbeddedPostgres:
    """A pgserver-managed cluster in ``<state>/<name>``, re-started on TCP loopback with password auth."""

    def __init__(self, state_dir: Path, name: str = TARGET_CLUSTER) -> None:
        self.pgdata = state_dir / name
        self.state_dir = state_dir
        self.name = name
        self._system_user: str | None = None
        self._started = False

    def start(self) -> str:
        """Initialise if needed, start, harden; returns the superuser's URL (database ``postgres``) over TCP."""
        with warnings.catch_warnings(), _runtime_dir_in(self.state_dir):
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver copes, so stay quiet.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import pgserver  # heavy import (psutil, platformdirs); only embedded mode needs it

        server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        # We restart the server under a new pid below, so pgserver's exit hook would chase a stale process
        # (and complain); this object stops the cluster itself instead.
        atexit.unregister(server._cleanup)
        server.global_process_id_list.get_and_remove(os.getpid())
        self._system_user = server.system_user
        self._started = True
        info = server.get_postmaster_info()
        socket_dir = str(info.socket_dir)
        superuser_pw = load_or_create_secret(self.state_dir / f"{self.name}_superuser_password", new_password)
        local = f"host={socket_dir} port={info.port} user={SUPERUSER} dbname=postgres"
        on_tcp = info.hostname == "127.0.0.1" and bool(info.port)  # left running by a killed earlier run
        with psycopg.connect(local, autocommit=True) as conn:
            _set_password(conn, SUPERUSER, superuser_pw, superuser=True)
            self._write_hba()
            if on_tcp:
                conn.execute("SELECT pg_reload_conf()")
        port = int(info.port) if on_tcp else self._restart_on_tcp(socket_dir)
        return postgres_url(SUPERUSER, superuser_pw, "127.0.0.1", port, "postgres")

    def _write_hba(self) -> None:
        # Overwrite in place: the file keeps its owner (the `pgserver` system user when we run as root).
        with open(self.pgdata / "pg_hba.conf", "w", encoding="utf-8") as handle:
            handle.write(PG_HBA)

    def _pg_ctl(self, args: list[str], timeout: float) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), *args]
        # No pipes: the postmaster inherits them and would keep them open (pgserver notes the same hang).
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self._system_user,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise DemoError(f"pg_ctl {args[-1]} failed; see {self.pgdata / 'log'}")

    def _restart_on_tcp(self, socket_dir: str) -> int:
        port = free_port()
        options = f"-h 127.0.0.1 -p {port} -k {shlex.quote(socket_dir)}"
        self._pg_ctl(["-w", "-t", "60", "-m", "fast", "-l", str(self.pgdata / "log"), "-o", options, "restart"], 90)
        return port

    @property
    def started(self) -> bool:
        return self._started

    def stop(self) -> None:
        """Stop the cluster we started (pgserver's own atexit hook cannot: we restarted it under a new pid)."""
        if not self._started:
            return
        self._started = False
        try:
            self._pg_ctl(["-w", "-t", "30", "-m", "fast", "stop"], 60)
        except (DemoError, subprocess.TimeoutExpired):
            print(f"[demo] embedded PostgreSQL did not stop cleanly; see {self.pgdata / 'log'}", flush=True)


def _set_password(conn: psycopg.Connection, role: str, password: str, *, superuser: bool) -> None:
    """Create or update a login role. Utility statements take no bind parameters, hence sql.Literal."""
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    attributes = "LOGIN SUPERUSER" if superuser else "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
    conn.execute(
        sql.SQL("{} ROLE {} " + attributes + " PASSWORD {}").format(
            sql.SQL(verb), sql.Identifier(role), sql.Literal(password)
        )
    )


def _create_database(conn: psycopg.Connection, name: str, owner: str | None = None) -> None:
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        return
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if owner:
        statement = sql.SQL("{} OWNER {}").format(statement, sql.Identifier(owner))
    conn.execute(statement)


def prepare_embedded_databases(control_admin_url: str, target_admin_url: str, state_dir: Path) -> Endpoints:
    """On the control plane's cluster, its database owned by the unprivileged ``phigate`` role; on the clinic's,
    the clinic owned by that cluster's superuser. Returns the URLs the rest of the demo uses."""
    control_pw = load_or_create_secret(state_dir / "pg_phigate_password", new_password)
    with psycopg.connect(control_admin_url, autocommit=True) as conn:
        _set_password(conn, CONTROL_PLANE_ROLE, control_pw, superuser=False)
        _create_database(conn, CONTROL_PLANE_DB, owner=CONTROL_PLANE_ROLE)
    with psycopg.connect(target_admin_url, autocommit=True) as conn:
        _create_database(conn, DATASOURCE)
    control = urlsplit(control_admin_url)
    return Endpoints(
        control_plane_url=postgres_url(
            CONTROL_PLANE_ROLE, control_pw, "127.0.0.1", int(control.port or 5432), CONTROL_PLANE_DB
        ),
        owner_url=with_database(target_admin_url, DATASOURCE),
        admin_url=target_admin_url,
    )


def external_endpoints(database_url: str) -> Endpoints:
    """With DATABASE_URL, that user runs the control plane and owns the clinic database next to it."""
    if unquote(urlsplit(database_url).path.strip("/")) == DATASOURCE:
        raise DemoError(f"DATABASE_URL must not point at the '{DATASOURCE}' database: the demo creates that one")
    return Endpoints(
        control_plane_url=database_url,
        owner_url=with_database(database_url, DATASOURCE),
        admin_url=database_url,
    )


def prepare_external_databases(endpoints: Endpoints) -> None:
    """Create the clinic database on the operator's server (the user needs CREATEDB)."""
    try:
        with psycopg.connect(endpoints.admin_url, autocommit=True, connect_timeout=10) as conn:
            _create_database(conn, DATASOURCE)
    except psycopg.errors.InsufficientPrivilege:
        raise DemoError("the DATABASE_URL user may not create databases (it needs CREATEDB and CREATEROLE)") from None
    except psycopg.OperationalError as exc:
        raise DemoError(f"cannot connect to DATABASE_URL: {_first_line(exc)}") from None


def ensure_clinic_loaded(owner_url: str) -> clinic.ClinicCounts | None:
    """Load the synthetic clinic unless a previous run did; returns the counts when it loaded."""
    with psycopg.connect(owner_url) as conn:
        if clinic.clinic_is_loaded(conn):
            return None
        return clinic.load_clinic(conn)


def _first_line(exc: BaseException) -> str:
    # libpq messages can be multi-line; the first line says what went wrong without echoing a DSN.
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
