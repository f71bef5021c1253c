"""Test harness: real PostgreSQL, real Redis, real gateway and Celery worker processes.

Each run creates its own control-plane and target databases (dropped at the end). The test process itself plays
the web process (Django's test client over the real URLconf) and holds no target credential; the gateway and
the worker are separate processes started with only their own credential, exactly as in production.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests import cleanliness, environment

environment.install()

import django  # noqa: E402

django.setup()

SCREENSHOTS_VARIABLE = "PHIGATE_SCREENSHOTS_DIR"
_SNAPSHOT = pytest.StashKey[cleanliness.Snapshot]()


def _explicit_screenshots() -> Path | None:
    value = os.environ.get(SCREENSHOTS_VARIABLE, "").strip()
    return Path(value).resolve() if value else None


def _is_xdist_worker(session: pytest.Session) -> bool:
    return hasattr(session.config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    """The leftovers guard runs in the process that owns the whole run: the controller under pytest-xdist (a
    worker would see its siblings' files, still in use, as leftovers), else the only process."""
    if not _is_xdist_worker(session):
        session.stash[_SNAPSHOT] = cleanliness.Snapshot()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if it left anything in the work tree or /tmp (tests/cleanliness.py says what is exempt).

    Runs after every fixture's teardown (services stopped, databases dropped, evidence directory removed)."""
    snapshot = session.stash.get(_SNAPSHOT, None)
    if snapshot is None or exitstatus == pytest.ExitCode.INTERRUPTED:
        return
    basetemp = session.config._tmp_path_factory._basetemp  # type: ignore[attr-defined]  # None if never used
    leftovers = snapshot.leftovers(basetemp, _explicit_screenshots())
    if not leftovers:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["the test run left these behind (tests must write under tmp_path and clean up):", *leftovers]
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", "leftovers", red=True)
        for line in lines:
            reporter.write_line(line)
    else:
        print("\n".join(lines))
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


# The files that take minutes each (a crawl of every page as every role; 2,000 generated statements on base and
# twins). Collected first, so pytest-xdist gives each to a worker at the start and the many short files fill in
# around them, instead of both starting last and running alone.
LONGEST_FILES = ("tests/test_hostile_crawl.py", "tests/test_noninterference.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FILES.index(path) if path in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: the order within each file, and of the other files, is kept


def _admin() -> psycopg.Connection:
    return psycopg.connect(environment.ADMIN_URL, autocommit=True)


@pytest.fixture(scope="session", autouse=True)
def evidence_dir() -> Iterator[Path]:
    """EVIDENCE_DIR of this run (tests/environment.py; the worker writes UI-requested bundles there): removed
    at the end with whatever the export jobs left in it."""
    path = Path(environment.COMMON_ENV["EVIDENCE_DIR"])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where browser tests write screenshots: under pytest's temporary directory, outside the work tree, unless
    PHIGATE_SCREENSHOTS_DIR names a directory (``make screenshots`` refreshes docs/screenshots/ that way)."""
    explicit = _explicit_screenshots()
    if explicit is None:
        return tmp_path_factory.mktemp("screenshots")
    explicit.mkdir(parents=True, exist_ok=True)
    return explicit


@pytest.fixture(scope="session", autouse=True)
def control_plane() -> Iterator[str]:
    import redis
    from django.core.management import call_command
    from django.db import connections

    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{environment.CONTROL_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{environment.CONTROL_DB}"')
    redis.Redis.from_url(environment.REDIS_URL).flushdb()
    call_command("migrate", verbosity=0)
    yield environment.CONTROL_DB
    connections.close_all()
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{environment.CONTROL_DB}" WITH (FORCE)')


@dataclass(frozen=True)
class Target:
    owner_url: str
    read_url: str
    write_url: str


@pytest.fixture(scope="session")
def target(control_plane: str) -> Iterator[Target]:
    from demo.clinic import CLINIC_TABLES, PATIENT_KEYS, PHI_TAGS, load_clinic
    from policy.models import ClassificationSource, ClassifiedRelation, DataSource, PatientKeyColumn, PhiColumn
    from policy.provisioning import provision

    owner_url = environment.db_url(environment.TARGET_DB)
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{environment.TARGET_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{environment.TARGET_DB}"')
    with psycopg.connect(owner_url) as conn:
        load_clinic(conn, patients=300)
        conn.execute("CREATE TABLE execution_probe (id serial PRIMARY KEY, note text NOT NULL)")
        conn.execute("CREATE TABLE scratch (id int PRIMARY KEY, label text)")
        conn.execute("INSERT INTO scratch SELECT g, 'row ' || g FROM generate_series(1, 50) g")
        conn.commit()
    urls = provision(
        owner_url, read_role=environment.READ_ROLE, write_role=environment.WRITE_ROLE, transfer_ownership=True
    )
    datasource, _ = DataSource.objects.get_or_create(name=environment.DATASOURCE)
    for tag in PHI_TAGS:
        PhiColumn.objects.update_or_create(
            datasource=datasource,
            schema_name="public",
            table_name=tag.table,
            column_name=tag.column,
            defaults={"phi_type": tag.phi_type},
        )
    for patient_key in PATIENT_KEYS:
        PatientKeyColumn.objects.update_or_create(
            datasource=datasource,
            schema_name="public",
            table_name=patient_key.table,
            column_name=patient_key.column,
            defaults={"key_name": patient_key.key_name},
        )
    for table in (*CLINIC_TABLES, "execution_probe", "scratch"):
        ClassifiedRelation.objects.get_or_create(
            datasource=datasource, schema_name="public", table_name=table, defaults={"how": ClassificationSource.SEED}
        )
    yield Target(owner_url=owner_url, read_url=urls.read_url, write_url=urls.write_url)
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{environment.TARGET_DB}" WITH (FORCE)')
        for role in (environment.READ_ROLE, environment.WRITE_ROLE):
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


@dataclass
class Services:
    target: Target
    gateway: object
    gateway_port: int
    worker: object
    log_dir: Path


@pytest.fixture(scope="session")
def services(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    from tests import services as svc

    log_dir = tmp_path_factory.mktemp("service-logs")
    gateway, port = svc.gateway(target.read_url, log_dir)
    worker = svc.worker(target.write_url, log_dir)
    running = Services(target=target, gateway=gateway, gateway_port=port, worker=worker, log_dir=log_dir)
    yield running
    running.worker.stop()  # type: ignore[attr-defined]
    running.gateway.stop()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Web:
    url: str


@pytest.fixture(scope="session")
def web(services: Services) -> Iterator[Web]:
    """The real web process (uvicorn on the ASGI application), for browser tests."""
    from tests import services as svc

    process, port = svc.web(services.log_dir)
    yield Web(url=f"http://127.0.0.1:{port}")
    process.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """Debian's Chromium driven by Playwright (never a downloaded browser).

    Module-scoped: Playwright's sync API keeps an event loop running in this thread while it is open, which
    would break later tests that call asyncio.run (asyncpg). Inside, the test's own ORM calls are still plain
    synchronous code: Django's documented escape hatch for exactly this case is set only meanwhile.
    """
    import os

    from playwright.sync_api import sync_playwright

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            yield browser
            browser.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
