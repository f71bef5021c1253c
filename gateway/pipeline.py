"""The one policy pipeline every front uses (HTTP now; wire and MCP later).

authenticate (done by the front) -> classify -> audit -> hold | deny | execute the read -> mask -> audit.

The audit record of an allowed read commits *before* the statement runs: if it cannot be written the read
never happens (non-negotiable 6). Runs in the gateway process, which holds the read-only credential.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field

import psycopg
from django.conf import settings
from django.db import transaction

from approvals.lifecycle import open_ticket
from approvals.models import Ticket
from audit.models import EventKind, Outcome
from audit.recorder import Context, record
from gateway.read_executor import ReadExecutor
from identity.principal import Principal
from policy.catalog_cache import CatalogCache
from policy.classifier import Classification, UnparsableStatement, Verdict, classify
from policy.credentials import Access, target_url
from policy.errors import scrub_error
from policy.masking import require_pseudonym_key
from policy.models import DataSource
from policy.target_catalog import TargetCatalog, plan_masks

log = logging.getLogger(__name__)

# Plain SELECTs are read through a server-side cursor so the row cap bounds memory; other allowed statements
# (SHOW, EXPLAIN, VALUES) return small results.
_CURSOR_CAPABLE = frozenset({"SELECT"})
# An API request is one statement in one transaction on a pooled connection: statements that only make sense
# with session state (SET, cursors, BEGIN ...) are refused there, so no request can leave state for the next.
ONE_SHOT_TYPES = frozenset({"SELECT", "SHOW", "EXPLAIN"})


@dataclass
class StatementOutcome:
    status: str  # executed | pending | denied | invalid | failed
    columns: list[str] = field(default_factory=list)
    rows: list[list[str | None]] = field(default_factory=list)
    rowcount: int = 0
    truncated: bool = False
    reasons: list[str] = field(default_factory=list)
    ticket_id: int | None = None
    ticket_url: str = ""
    error: str = ""
    masking: dict[str, dict[str, str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class DatasourceRuntime:
    """Read-only connections and catalog snapshots per data source, created on first use."""

    def __init__(self) -> None:
        self._executors: dict[str, ReadExecutor] = {}
        self._lock = threading.Lock()
        self.catalogs = CatalogCache(Access.READ)

    def executor(self, datasource: str) -> ReadExecutor:
        with self._lock:
            if datasource not in self._executors:
                self._executors[datasource] = ReadExecutor(target_url(datasource, Access.READ))
            return self._executors[datasource]

    def catalog(self, datasource: str) -> TargetCatalog:
        return self.catalogs.get(datasource, target_url(datasource, Access.READ))

    def close(self) -> None:
        with self._lock:
            for executor in self._executors.values():
                executor.close()
            self._executors.clear()


def _touches_phi(classification: Classification, catalog: TargetCatalog) -> bool:
    for name in classification.relations:
        oid = catalog.relation_oid(name)
        if oid is None or oid < 0 or oid in catalog.tagged_relations:
            return True
    return False


def handle_statement(
    *,
    principal: Principal,
    datasource_name: str,
    sql: str,
    reason: str,
    context: Context,
    runtime: DatasourceRuntime,
    session_statements: bool = False,
) -> StatementOutcome:
    datasource = DataSource.objects.filter(name=datasource_name, is_active=True).first()
    if datasource is None:
        with transaction.atomic():
            record(
                EventKind.QUERY_DENIED,
                principal=principal,
                context=context,
                outcome=Outcome.DENIED,
                datasource=datasource_name[:63],
                statement=sql,
                summary="unknown or inactive data source",
            )
        return StatementOutcome(status="denied", reasons=[f"unknown data source {datasource_name!r}"])

    catalog = runtime.catalog(datasource.name)
    try:
        classification = classify(sql, catalog.functions)
    except UnparsableStatement as exc:
        with transaction.atomic():
            record(
                EventKind.QUERY_DENIED,
                principal=principal,
                context=context,
                outcome=Outcome.DENIED,
                datasource=datasource.name,
                statement=sql,
                summary="statement could not be parsed",
                details={"verdict": "invalid", "error": str(exc)},
            )
        return StatementOutcome(status="invalid", error=f"syntax error: {exc}")

    verdict, reasons = classification.verdict, list(classification.reasons)
    session_only = sorted(set(classification.statement_types) - ONE_SHOT_TYPES)
    if verdict == Verdict.ALLOWED and session_only and not session_statements:
        verdict = Verdict.DENIED
        reasons = [
            f"{', '.join(session_only)} needs a session; it is only available on the wire protocol "
            "(each API request is one statement in its own transaction)"
        ]
    submitted: dict[str, object] = {
        "verdict": str(verdict),
        "risk": str(classification.risk),
        "reasons": reasons,
        "fingerprint": classification.fingerprint,
        "statement_types": list(classification.statement_types),
        "relations": list(classification.relations),
        "reason": reason,
    }

    if verdict == Verdict.DENIED:
        with transaction.atomic():
            record(
                EventKind.QUERY_DENIED,
                principal=principal,
                context=context,
                outcome=Outcome.DENIED,
                datasource=datasource.name,
                statement=sql,
                summary="denied by policy: " + "; ".join(reasons),
                details=submitted,
            )
        return StatementOutcome(status="denied", reasons=reasons)

    if verdict == Verdict.HELD:
        with transaction.atomic():
            ticket = open_ticket(
                principal=principal,
                datasource=datasource,
                sql=sql,
                reason=reason,
                risk=str(classification.risk),
                reasons=reasons,
                statement_types=classification.statement_types,
                relations=classification.relations,
                approvals_required=max(1, classification.approvals_required),
                fingerprint=classification.fingerprint,
                context=context,
            )
        return StatementOutcome(status="pending", reasons=reasons, ticket_id=ticket.pk, ticket_url=ticket.url)

    return _run_allowed_read(principal, datasource, sql, classification, catalog, submitted, context, runtime)


def _run_allowed_read(
    principal: Principal,
    datasource: DataSource,
    sql: str,
    classification: Classification,
    catalog: TargetCatalog,
    submitted: dict[str, object],
    context: Context,
    runtime: DatasourceRuntime,
) -> StatementOutcome:
    key = require_pseudonym_key()
    with transaction.atomic():  # committed before the read runs: no audit record, no read
        submitted_event = record(
            EventKind.QUERY_SUBMITTED,
            principal=principal,
            context=context,
            datasource=datasource.name,
            statement=sql,
            summary="allowed: provably read-only",
            details=submitted,
        )
    started = time.monotonic()
    statement_types = set(classification.statement_types)
    try:
        raw = runtime.executor(datasource.name).run(
            sql,
            cursor_capable=statement_types <= _CURSOR_CAPABLE,
            row_cap=settings.RESULT_ROW_CAP,
            timeout_ms=settings.READ_STATEMENT_TIMEOUT_MS,
        )
    except psycopg.Error as exc:
        diag = exc.diag
        error = scrub_error(
            diag.sqlstate or "XX000",
            diag.message_primary or "statement failed",
            touches_phi=_touches_phi(classification, catalog),
        )
        with transaction.atomic():
            record(
                EventKind.QUERY_FAILED,
                principal=principal,
                context=context,
                outcome=Outcome.FAILURE,
                datasource=datasource.name,
                summary=error,
                details={"submitted_event": submitted_event.pk, "sqlstate": diag.sqlstate},
            )
        return StatementOutcome(status="failed", error=error)
    plan = plan_masks(raw.origins, classification, catalog)
    rows = plan.apply(raw.rows, key)
    masking = plan.describe(raw.columns)
    sent = json.dumps({"columns": raw.columns, "rows": rows}, separators=(",", ":")).encode()
    with transaction.atomic():
        record(
            EventKind.QUERY_EXECUTED,
            principal=principal,
            context=context,
            datasource=datasource.name,
            summary=f"{raw.rowcount} rows returned" + (" (truncated)" if raw.truncated else ""),
            details={
                "submitted_event": submitted_event.pk,
                "rowcount": raw.rowcount,
                "truncated": raw.truncated,
                "masking": masking,
                "result_sha256": hashlib.sha256(sent).hexdigest(),
                "duration_ms": round((time.monotonic() - started) * 1000, 2),
            },
        )
    return StatementOutcome(
        status="executed",
        columns=raw.columns,
        rows=rows,
        rowcount=raw.rowcount,
        truncated=raw.truncated,
        masking=masking,
    )


def ticket_link(ticket: Ticket) -> dict[str, object]:
    return {"id": ticket.pk, "url": ticket.url}
