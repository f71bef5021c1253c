"""Serving base and twins: databases, read roles, data sources, and a private gateway (and Redis) for them.

The gateway answers API statements from one Redis list shared by every gateway on the same Redis database. The
suite's shared gateway (tests/conftest.py ``services``) knows only the ``clinic`` data source, so if both listened
on one list, a request for a twin could land on the gateway that has no credential for it. The harness therefore
starts its own redis-server (no persistence, on a free loopback port) next to its own gateway, and the test
process's HTTP front is pointed at it with ``override_settings(REDIS_URL=...)`` while the harness runs.

Data sources (names are also the wire's database names):

* ``ni_base``, ``ni_ordered``, ``ni_scrambled``: base and twins, default policy (the PHI tags of demo.clinic);
* ``ni_ctl_base``, ``ni_ctl_scrambled``: the same two databases under a deliberately weakened policy (agents may
  filter on SSNs: ``InferenceRule(ssn, agent, allow)``), for the control that proves the harness fires.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests import environment
from tests.noninterference import twins
from tests.services import Service, free_port, port_open, wait_until

BASE = "ni_base"
TWINS = ("ni_ordered", "ni_scrambled")
CONTROL_BASE = "ni_ctl_base"
CONTROL_TWINS = ("ni_ctl_scrambled",)
PATIENTS = 40


@dataclass
class World:
    """Everything the oracle needs to reach base and twins, and what teardown must remove."""

    gateway_port: int
    redis_url: str
    db_of: dict[str, str]  # data source -> database name
    owner_url_of: dict[str, str]
    base_data: twins.TwinData
    differing: dict[str, dict[str, int]] = field(default_factory=dict)
    gateway: Service | None = None

    def names(self, control: bool = False) -> tuple[str, tuple[str, ...]]:
        return (CONTROL_BASE, CONTROL_TWINS) if control else (BASE, TWINS)


def _admin() -> psycopg.Connection:
    return psycopg.connect(environment.ADMIN_URL, autocommit=True)


def _agent_masks() -> dict[str, str]:
    from policy.defaults import DEFAULT_MASKS
    from policy.models import IdentityKind

    return {str(t): str(row[IdentityKind.AGENT]) for t, row in DEFAULT_MASKS.items()}


def _tag(name: str) -> None:
    from demo.clinic import PHI_TAGS
    from policy.models import DataSource, PhiColumn

    datasource, _ = DataSource.objects.update_or_create(name=name, defaults={"is_active": True})
    for tag in PHI_TAGS:
        PhiColumn.objects.update_or_create(
            datasource=datasource,
            schema_name="public",
            table_name=tag.table,
            column_name=tag.column,
            defaults={"phi_type": tag.phi_type},
        )
    # Where the policy knows which relations it has classified (issue 12: agents read only those), the clinic's
    # tables are classified as a reviewer would classify them, exactly like the suite's shared target.
    from policy import models

    classified = getattr(models, "ClassifiedRelation", None)
    if classified is not None:
        for table, _ in twins.TABLES:
            classified.objects.get_or_create(
                datasource=datasource, schema_name="public", table_name=table, defaults={"how": "seed"}
            )


def weaken(name: str) -> None:
    """The control's legitimate misconfiguration: agents may filter, sort and group on SSNs."""
    from policy.models import DataSource, InferenceRule

    InferenceRule.objects.update_or_create(
        datasource=DataSource.objects.get(name=name),
        phi_type="ssn",
        identity_kind="agent",
        defaults={"action": "allow"},
    )


@contextmanager
def world(patients: int = PATIENTS) -> Iterator[World]:
    from django.conf import settings

    from demo.clinic import load_clinic
    from policy.provisioning import provision

    run = environment.RUN_ID
    scratch = Path(tempfile.mkdtemp(prefix=f"phigate-noninterference-{run}-"))
    databases = {BASE: f"ni_base_{run}", TWINS[0]: f"ni_ordered_{run}", TWINS[1]: f"ni_scrambled_{run}"}
    roles = [f"ni_{kind}_{db}" for db in databases.values() for kind in ("r", "w")]
    services: list[Service] = []
    try:
        with _admin() as conn:
            for db in databases.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{db}"')
        owner = {name: environment.db_url(db) for name, db in databases.items()}
        with psycopg.connect(owner[BASE]) as conn:
            assert conn.execute("SHOW TimeZone").fetchone() in (("Etc/UTC",), ("UTC",)), "twins assume UTC"
            load_clinic(conn, patients=patients)
            twins.freeze_statistics(conn)
            base = twins.read_tables(conn)
        key = settings.PSEUDONYM_KEY.encode()
        differing: dict[str, dict[str, int]] = {}
        for spec, name in zip((twins.ORDERED, twins.SCRAMBLED), TWINS, strict=True):
            data = twins.make_twin(base, spec)
            differing[name] = twins.check_twin(base, data, spec, _agent_masks(), key)
            assert twins.mentions_of_base_names(base, data) == 0
            with psycopg.connect(owner[name]) as conn:
                twins.write_tables(conn, data)
                twins.freeze_statistics(conn)
                assert twins.read_tables(conn).rows == data.rows, "the twin did not round-trip"
        with psycopg.connect(owner[BASE]) as conn:
            layout = twins.physical_layout(conn)
        for name in TWINS:
            with psycopg.connect(owner[name]) as conn:
                assert twins.physical_layout(conn) == layout, f"{name}: physical layout differs from the base"
        read_url: dict[str, str] = {}
        for name, db in databases.items():
            urls = provision(owner[name], read_role=f"ni_r_{db}", write_role=f"ni_w_{db}")
            read_url[name] = urls.read_url
        read_url[CONTROL_BASE] = read_url[BASE]
        read_url[CONTROL_TWINS[0]] = read_url[TWINS[1]]
        for name in read_url:
            _tag(name)
        weaken(CONTROL_BASE)
        weaken(CONTROL_TWINS[0])

        redis_port = free_port()
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        redis_binary = shutil.which("redis-server") or "redis-server"
        redis_argv = [redis_binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        redis_argv += ["no", "--dir", str(scratch), "--daemonize", "no"]
        services.append(Service("ni-redis", redis_argv, {}, scratch).start())
        wait_until(lambda: port_open(redis_port), 30, what="private redis-server")

        gateway_port = free_port()
        env = {f"DATASOURCE_{name.upper()}_READ_URL": url for name, url in read_url.items()}
        env.update(
            REDIS_URL=redis_url,
            AUDIT_JOURNAL_DIR=str(scratch / "journal"),
            READ_STATEMENT_TIMEOUT_MS="5000",
            RESULT_ROW_CAP="1000",
        )
        argv = [sys.executable, "manage.py", "gateway", "--host", "127.0.0.1", "--port", str(gateway_port)]
        gateway = Service("ni-gateway", argv, env, scratch).start()
        services.append(gateway)
        wait_until(lambda: port_open(gateway_port) or not gateway.alive(), 30, what="gateway to listen")
        assert gateway.alive(), gateway.log_tail()
        db_of = dict(databases)
        db_of[CONTROL_BASE], db_of[CONTROL_TWINS[0]] = databases[BASE], databases[TWINS[1]]
        yield World(
            gateway_port=gateway_port,
            redis_url=redis_url,
            db_of=db_of,
            owner_url_of=owner,
            base_data=base,
            differing=differing,
            gateway=gateway,
        )
    finally:
        for service in reversed(services):
            service.stop()
        _retire([*databases, CONTROL_BASE, *CONTROL_TWINS])
        with _admin() as conn:
            for db in databases.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            for role in roles:
                conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        shutil.rmtree(scratch, ignore_errors=True)


def _retire(names: list[str]) -> None:
    """Leave the shared control plane usable by later tests: no pending tickets of ours, data sources inactive.

    Tickets and audit events stay (the audit trail is append-only); only the pending ones are closed, so the
    reviewers' queues other tests look at are not flooded with thousands of harness tickets.
    """
    from django.utils import timezone

    from approvals.models import Status, Ticket
    from policy.models import DataSource

    Ticket.objects.filter(datasource__name__in=names, status=Status.PENDING).update(
        status=Status.CANCELLED, decided_at=timezone.now()
    )
    DataSource.objects.filter(name__in=names).update(is_active=False)
